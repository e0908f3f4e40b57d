/// Little-endian encoding by shifting: no unsafe code, no Foundation.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }
    /// Direct access, for appending page bytes without an intermediate copy.
    public mutating func withBytes<R>(_ body: (inout [UInt8]) -> R) -> R { body(&bytes) }
    /// Empties the buffer, keeping its capacity.
    public mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(truncatingIfNeeded: v)); bytes.append(UInt8(truncatingIfNeeded: v >> 8)) }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func append<C: Collection>(_ data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }
    /// A string as u16 length + UTF-8 bytes.
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count))
        bytes += utf8
    }
}

/// Bounds-checked little-endian decoding over a byte array slice.
public struct WireReader: Sendable {
    let bytes: [UInt8]
    public private(set) var index: Int
    let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        index = range?.lowerBound ?? 0
        end = range?.upperBound ?? bytes.count
    }

    public var remaining: Int { end - index }
    public var isAtEnd: Bool { index == end }

    mutating func take(_ count: Int, _ field: String) throws(ProtocolError) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .truncated(field) }
        defer { index += count }
        return index..<index + count
    }

    public mutating func u8(_ field: String) throws(ProtocolError) -> UInt8 { bytes[try take(1, field).lowerBound] }
    public mutating func u16(_ field: String) throws(ProtocolError) -> UInt16 { UInt16(try value(2, field)) }
    public mutating func u32(_ field: String) throws(ProtocolError) -> UInt32 { UInt32(try value(4, field)) }
    public mutating func u64(_ field: String) throws(ProtocolError) -> UInt64 { try value(8, field) }

    public mutating func bytes(_ count: Int, _ field: String) throws(ProtocolError) -> ArraySlice<UInt8> {
        bytes[try take(count, field)]
    }

    /// The index range of the next `count` bytes, consumed.
    public mutating func range(_ count: Int, _ field: String) throws(ProtocolError) -> Range<Int> {
        try take(count, field)
    }

    public mutating func string(_ field: String) throws(ProtocolError) -> String {
        let length = Int(try u16(field + " length"))
        let raw = try bytes(length, field)
        guard let text = String(validating: raw, as: UTF8.self) else { throw .malformed("\(field) is not UTF-8") }
        return text
    }

    private mutating func value(_ count: Int, _ field: String) throws(ProtocolError) -> UInt64 {
        let range = try take(count, field)
        var result: UInt64 = 0
        for i in range.reversed() { result = result << 8 | UInt64(bytes[i]) }
        return result
    }
}

/// The integrity check on every frame: four multiply lanes over 64-bit
/// little-endian words, then the tail bytes, mixed.  Catches corruption, not
/// tampering (use TLS).  Reads through a `Span`, so it is bounds-checked and
/// still runs at several GB/s.
public enum FrameChecksum {
    public static func of(_ bytes: ArraySlice<UInt8>) -> UInt64 { of(bytes.span) }

    public static func of(_ bytes: Span<UInt8>) -> UInt64 {
        let prime: UInt64 = 0x100_0000_01b3
        var l0: UInt64 = 0xcbf2_9ce4_8422_2325, l1: UInt64 = 0x84222325cbf29ce4
        var l2: UInt64 = 0x9e37_79b9_7f4a_7c15, l3: UInt64 = 0xc2b2_ae3d_27d4_eb4f
        var i = 0
        let wordsEnd = (bytes.count / 32) * 32
        @inline(__always) func word(_ at: Int) -> UInt64 {
            var w: UInt64 = 0
            for k in 0..<8 { w |= UInt64(bytes[at + k]) << (8 * UInt64(k)) }
            return w
        }
        while i < wordsEnd {
            l0 = (l0 ^ word(i)) &* prime
            l1 = (l1 ^ word(i + 8)) &* prime
            l2 = (l2 ^ word(i + 16)) &* prime
            l3 = (l3 ^ word(i + 24)) &* prime
            i += 32
        }
        var h = l0 ^ (l1 << 13 | l1 >> 51) ^ (l2 << 29 | l2 >> 35) ^ (l3 << 47 | l3 >> 17)
        while i < bytes.count { h = (h ^ UInt64(bytes[i])) &* prime; i += 1 }
        h ^= UInt64(bytes.count)
        h ^= h >> 30; h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27; h = h &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}
