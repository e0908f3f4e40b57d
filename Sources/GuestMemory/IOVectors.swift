import Glibc

/// What one gather write sends, in order: small bytes the caller builds (frame
/// headers, record tables), kept in one owned arena, and ranges of guest
/// memory, referenced where they lie.  A channel hands the whole list to the
/// kernel in one `writev`, so page data goes from guest RAM to the socket
/// without a copy in user space.
///
/// A memory range holds its `HostMapping`, so the memory stays mapped while
/// the list lives.  The guest may write a range while it is sent: the bytes
/// that leave are whatever the page held when the kernel copied it.
public struct GatherList: @unchecked Sendable {
    // @unchecked: the mappings are immutable, and the list is used by one thread at a time.
    enum Segment {
        case arena(Range<Int>)
        case memory(HostMapping, offset: Int, count: Int)
    }
    var arena: [UInt8] = []
    var segments: [Segment] = []
    public private(set) var byteCount = 0

    public init(arenaCapacity: Int = 0) { arena.reserveCapacity(arenaCapacity) }

    public var isEmpty: Bool { byteCount == 0 }
    public var segmentCount: Int { segments.count }

    /// Appends a copy of `bytes` (headers and tables: small).
    public mutating func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let start = arena.count
        arena.append(contentsOf: bytes)
        // Adjacent arena bytes stay one segment.
        if case .arena(let last)? = segments.last, last.upperBound == start {
            segments[segments.count - 1] = .arena(last.lowerBound..<arena.count)
        } else {
            segments.append(.arena(start..<arena.count))
        }
        byteCount += bytes.count
    }

    /// Appends a copy of `bytes` (compressed pages).
    public mutating func append(_ bytes: Span<UInt8>) {
        guard !bytes.isEmpty else { return }
        let start = arena.count
        arena.reserveCapacity(start + bytes.count)
        for i in bytes.indices { arena.append(bytes[i]) }
        if case .arena(let last)? = segments.last, last.upperBound == start {
            segments[segments.count - 1] = .arena(last.lowerBound..<arena.count)
        } else {
            segments.append(.arena(start..<arena.count))
        }
        byteCount += bytes.count
    }

    /// Appends `count` bytes of guest memory at `offset` of `mapping`, by reference.
    public mutating func append(_ mapping: HostMapping, offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && count <= mapping.byteCount - offset, "range outside the mapping")
        guard count > 0 else { return }
        if case .memory(let m, let o, let c)? = segments.last, m === mapping, o + c == offset {
            segments[segments.count - 1] = .memory(m, offset: o, count: c + count)
        } else {
            segments.append(.memory(mapping, offset: offset, count: count))
        }
        byteCount += count
    }

    /// Empties the list, keeping its storage.
    public mutating func removeAll() {
        arena.removeAll(keepingCapacity: true)
        segments.removeAll(keepingCapacity: true)
        byteCount = 0
    }

    /// The bytes as one array (a copy: for channels that are not descriptors).
    public func flattened() -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(byteCount)
        for segment in segments {
            switch segment {
            case .arena(let range): bytes.append(contentsOf: arena[range])
            case .memory(let mapping, let offset, let count):
                unsafe mapping.withBytes(at: offset, count: count) { unsafe bytes.append(contentsOf: $0) }
            }
        }
        return bytes
    }

    /// Calls `body` with one `iovec` per segment (for `writev`/`sendmsg`).  The
    /// vectors are valid only inside `body`.
    public func withIOVectors<R>(_ body: (UnsafeBufferPointer<iovec>) throws -> R) rethrows -> R {
        try unsafe arena.withUnsafeBytes { arenaBytes in
            var vectors = [iovec]()
            vectors.reserveCapacity(segments.count)
            for segment in segments {
                switch segment {
                case .arena(let range):
                    // SAFETY: `range` lies inside the arena, which stays pinned for the whole closure.
                    unsafe vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: arenaBytes.baseAddress! + range.lowerBound),
                                                iov_len: range.count))
                case .memory(let mapping, let offset, let count):
                    // SAFETY: checked against the mapping when appended; the list keeps the mapping alive.
                    unsafe vectors.append(iovec(iov_base: mapping.base + offset, iov_len: count))
                }
            }
            return try unsafe vectors.withUnsafeBufferPointer { try unsafe body($0) }
        }
    }
}

/// Where one scatter read puts the bytes it reads, in order: ranges of guest
/// memory.  A channel fills the whole list with `readv`, so page data goes
/// from the socket into guest RAM without a copy in user space.
public struct ScatterList: @unchecked Sendable {
    // @unchecked: the mappings are immutable, and the list is used by one thread at a time.
    struct Target {
        let mapping: HostMapping
        let offset: Int
        let count: Int
    }
    var targets: [Target] = []
    public private(set) var byteCount = 0

    public init() {}

    public var isEmpty: Bool { byteCount == 0 }

    /// Appends `count` bytes of guest memory at `offset` of `mapping` as the next destination.
    public mutating func append(_ mapping: HostMapping, offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && count <= mapping.byteCount - offset, "range outside the mapping")
        guard count > 0 else { return }
        if let last = targets.last, last.mapping === mapping, last.offset + last.count == offset {
            targets[targets.count - 1] = Target(mapping: mapping, offset: last.offset, count: last.count + count)
        } else {
            targets.append(Target(mapping: mapping, offset: offset, count: count))
        }
        byteCount += count
    }

    public mutating func removeAll() {
        targets.removeAll(keepingCapacity: true)
        byteCount = 0
    }

    /// Stores `bytes[range]` (exactly `byteCount` long) into the targets, in
    /// order (a copy: for channels that are not descriptors).
    public func store(_ bytes: [UInt8], range: Range<Int>) {
        precondition(range.count == byteCount && range.lowerBound >= 0 && range.upperBound <= bytes.count)
        var position = range.lowerBound
        unsafe bytes.withUnsafeBytes { raw in
            for target in targets {
                // SAFETY: the ranges sum to `byteCount`, which the precondition checked against `range`.
                unsafe target.mapping.storeBytes(UnsafeRawBufferPointer(rebasing: raw[position..<position + target.count]), at: target.offset)
                position += target.count
            }
        }
    }

    /// Calls `body` with one `iovec` per target (for `readv`).  Valid only inside `body`.
    public func withIOVectors<R>(_ body: (UnsafeBufferPointer<iovec>) throws -> R) rethrows -> R {
        var vectors = [iovec]()
        vectors.reserveCapacity(targets.count)
        for target in targets {
            // SAFETY: checked against the mapping when appended; the list keeps the mapping alive.
            unsafe vectors.append(iovec(iov_base: target.mapping.base + target.offset, iov_len: target.count))
        }
        return try unsafe vectors.withUnsafeBufferPointer { try unsafe body($0) }
    }
}

extension HostMapping {
    /// Calls `body` with the `count` bytes at `offset` as a span (checksums,
    /// zero detection, compression).  The guest may be writing them.
    public func withSpan<R>(at offset: Int, count: Int, _ body: (Span<UInt8>) throws -> R) rethrows -> R {
        try unsafe withBytes(at: offset, count: count) { raw in
            let typed = unsafe raw.assumingMemoryBound(to: UInt8.self)
            return try body(unsafe typed.span)
        }
    }
}
