import Synchronization

/// All guest RAM: the RAM blocks and where they sit in guest physical space.
/// Every access is bounds-checked against the placements; nothing here can
/// reach outside a host mapping.
public final class GuestMemoryMap: Sendable {
    /// Pages the VMM itself wrote while recording is on, by block name: KVM's
    /// dirty log sees only guest writes, so a migration merges these in.
    let recordedWrites = Mutex<[String: DirtyBitmap]?>(nil)

    /// The start of the 32-bit MMIO hole (IOAPIC, LAPIC): RAM above 3 GiB moves to 4 GiB.
    public static let lowMemoryLimit: UInt64 = 3 << 30
    public static let highMemoryStart: UInt64 = 4 << 30

    public let blocks: [RAMBlock]

    public init(blocks: [RAMBlock]) { self.blocks = blocks }

    /// The PC layout: one block "pc.ram" of `byteCount` bytes, placed at
    /// `[0, min(size, 3 GiB))` and the rest from 4 GiB up.
    public static func pc(byteCount: UInt64, backend: MemoryBackend) throws(GuestMemoryError) -> GuestMemoryMap {
        let mapping = try HostMapping(byteCount: byteCount, backend: backend)
        let low = min(byteCount, lowMemoryLimit)
        var placements = [RAMBlock.Placement(guestRange: GuestRange(start: GuestAddress(0), byteCount: low)!, blockOffset: 0)]
        if byteCount > low {
            placements.append(RAMBlock.Placement(
                guestRange: GuestRange(start: GuestAddress(highMemoryStart), byteCount: byteCount - low)!,
                blockOffset: low))
        }
        return GuestMemoryMap(blocks: [RAMBlock(name: "pc.ram", mapping: mapping, placements: placements)])
    }

    /// Guest physical RAM ranges, lowest first (the memory map a guest is given).
    public var ramRanges: [GuestRange] {
        blocks.flatMap { $0.placements.map(\.guestRange) }.sorted { $0.start < $1.start }
    }

    public var totalBytes: UInt64 { blocks.reduce(0) { $0 + $1.byteCount } }

    /// The block and byte offset holding `[address, address + length)`, which
    /// must not straddle a placement.
    public func locate(_ address: GuestAddress, length: UInt64) throws(GuestMemoryError) -> (RAMBlock, Int) {
        for block in blocks {
            for placement in block.placements where placement.guestRange.contains(address, length: length) {
                let offset = placement.blockOffset + address.distance(from: placement.guestRange.start)!
                return (block, Int(offset))
            }
        }
        throw .outOfRange(address, length: length)
    }

    public func read(at address: GuestAddress, count: Int) throws(GuestMemoryError) -> [UInt8] {
        let (block, offset) = try locate(address, length: UInt64(count))
        return unsafe [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            unsafe block.mapping.copyBytes(at: offset, into: UnsafeMutableRawBufferPointer(buffer))
            initialized = count
        }
    }

    public func write(_ bytes: [UInt8], at address: GuestAddress) throws(GuestMemoryError) {
        let (block, offset) = try locate(address, length: UInt64(bytes.count))
        unsafe bytes.withUnsafeBytes { unsafe block.mapping.storeBytes($0, at: offset) }
        // Recorded after the store: a collection between the two sends the page again next time.
        recordedWrites.withLock { record in
            guard record != nil, !bytes.isEmpty else { return }
            let pageSize = PageSize.base.byteCount
            var bitmap = record![block.name] ?? DirtyBitmap(pageCount: Int(block.byteCount) / pageSize)
            for page in (offset / pageSize)...((offset + bytes.count - 1) / pageSize) { bitmap[page] = true }
            record![block.name] = bitmap
        }
    }

    /// Starts recording the pages `write` touches (for dirty tracking).
    public func startRecordingWrites() { recordedWrites.withLock { $0 = [:] } }

    /// The pages written since the last call, by block name; recording goes on.
    public func takeRecordedWrites() -> [String: DirtyBitmap] {
        recordedWrites.withLock { record in
            defer { if record != nil { record = [:] } }
            return record ?? [:]
        }
    }

    /// The pages written since the last `takeRecordedWrites`, which still reports them.
    public func peekRecordedWrites() -> [String: DirtyBitmap] { recordedWrites.withLock { $0 ?? [:] } }

    public func stopRecordingWrites() { recordedWrites.withLock { $0 = nil } }

    /// Little-endian integer reads, bounds-checked like `read`.
    public func readUInt32(at address: GuestAddress) throws(GuestMemoryError) -> UInt32 {
        let bytes = try read(at: address, count: 4)
        return bytes.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    public func readUInt64(at address: GuestAddress) throws(GuestMemoryError) -> UInt64 {
        let bytes = try read(at: address, count: 8)
        return bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Calls `body` with a read-only view of the 64-bit words of the page at
    /// `address` (4 KiB, inside one placement).  The guest may be writing them.
    public func withPageWords<R>(at address: GuestAddress, _ body: (Span<UInt64>) -> R) throws(GuestMemoryError) -> R {
        let (block, offset) = try locate(address, length: UInt64(PageSize.base.byteCount))
        return unsafe block.mapping.withBytes(at: offset, count: PageSize.base.byteCount) { raw in
            // SAFETY: mappings are page-aligned and the offset 4 KiB-aligned, so the words are
            // aligned; the span cannot outlive `body`.
            let words = unsafe raw.assumingMemoryBound(to: UInt64.self)
            return body(unsafe Span(_unsafeElements: words))
        }
    }

    /// A 64-bit FNV-1a digest of every RAM byte in guest-physical order, for
    /// comparing two VMs' memory (or one VM's before and after a pause).
    public func digest() -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for range in ramRanges {
            var address = range.start
            while address < range.end {
                let word = try! withPageWords(at: address) { words in
                    var h: UInt64 = 0xcbf2_9ce4_8422_2325
                    for i in words.indices { h = (h ^ words[i]) &* 0x100_0000_01b3 }
                    return h
                }
                hash = (hash ^ word) &* 0x100_0000_01b3
                address = address.advanced(by: UInt64(PageSize.base.byteCount))!
            }
        }
        return hash
    }
}
