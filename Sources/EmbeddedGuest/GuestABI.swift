import GuestMemory

/// The contract between the embedded guest and the VMM; mirrors guest/embedded/layout.h.
public enum GuestABI {
    /// 32-bit out: guest physical address of a `HeartbeatRecord`.
    public static let heartbeatPort: UInt16 = 0x510
    /// 32-bit out: the exception vector that killed the guest.
    public static let panicPort: UInt16 = 0x511
    /// The first guest physical address the workload writes.
    public static let workBase: UInt64 = 0x80_0000
    /// "FERRYPG1", the first word of every page the workload wrote.
    public static let pageMagic: UInt64 = 0x3147_5059_5252_4546
    public static let heartbeatMagic: UInt32 = 0x3154_4248
    public static let pageWords = 512
    /// Where the image header sits (the ELF's load address), and its fields.
    public static let imageHeaderAddress: UInt64 = 0x10_0000
    static let imageHeaderMagic = Array("FERRYGST".utf8)
    static let headerVersionOffset: UInt64 = 8
    static let maximumCPUsOffset: UInt64 = 12
    static let perCPUOffset: UInt64 = 24
    static let perCPUSize: UInt64 = 256
    static let writingOffset: UInt64 = 40
    /// Header version 2 adds the written-page bitmap: its guest physical
    /// address (u64 at 0x20) and how many pages it covers (u64 at 0x28).
    static let writtenBitmapVersion: UInt32 = 2
    /// Header version 3: the bitmap means "in use"; the guest clears a page's
    /// bit when it frees the page (free=, churn, the balloon), whose contents
    /// then no longer matter.
    static let inUseBitmapVersion: UInt32 = 3
    static let writtenBitmapOffset: UInt64 = 0x20
    static let writtenBitmapPagesOffset: UInt64 = 0x28
    /// The guest maps at most 68 GiB (layout.h: 4 + HIGH_PD_COUNT GiB), so its
    /// bitmap never covers more pages than that; a larger claim is not believed.
    static let maximumBitmapPages: UInt64 = 68 << 18

    /// Whether the embedded guest's image header is at its load address.
    static func hasImageHeader(_ memory: GuestMemoryMap) -> Bool {
        (try? memory.read(at: GuestAddress(imageHeaderAddress), count: 8)) == imageHeaderMagic
    }

    /// The pages the guest's vCPUs are writing right now (at most one each),
    /// read from their per-CPU blocks.  A paused guest may have one half
    /// written; the verifier sets these aside.  Empty if the embedded guest is
    /// not what runs.
    public static func pagesBeingWritten(in memory: GuestMemoryMap) -> Set<GuestAddress> {
        guard hasImageHeader(memory),
              let cpus = try? memory.readUInt32(at: GuestAddress(imageHeaderAddress + maximumCPUsOffset)),
              let perCPU = try? memory.readUInt64(at: GuestAddress(imageHeaderAddress + perCPUOffset)) else { return [] }
        var pages = Set<GuestAddress>()
        for cpu in 0..<UInt64(min(cpus, 256)) {
            // `perCPU` is the guest's word: an address past the end of the address space is no CPU's.
            let (start, over) = perCPU.addingReportingOverflow(cpu * perCPUSize + writingOffset)
            if !over, let writing = try? memory.readUInt64(at: GuestAddress(start)), writing != 0 {
                pages.insert(GuestAddress(writing - 1))
            }
        }
        return pages
    }

    /// The guest's written-page bitmap, covering the guest's RAM, or `nil`
    /// when the image header is absent or older than version 2 (then the
    /// verifier cannot tell a lost page from one never written).
    public static func writtenPages(in memory: GuestMemoryMap) -> WrittenPages? {
        let header = GuestAddress(imageHeaderAddress)
        guard hasImageHeader(memory),
              let version = try? memory.readUInt32(at: header.advanced(by: headerVersionOffset)!), version >= writtenBitmapVersion,
              let address = try? memory.readUInt64(at: header.advanced(by: writtenBitmapOffset)!),
              let claimed = try? memory.readUInt64(at: header.advanced(by: writtenBitmapPagesOffset)!),
              claimed <= maximumBitmapPages else { return nil }
        let ramPages = (memory.ramRanges.map(\.end.rawValue).max() ?? 0) / UInt64(PageSize.base.byteCount)
        let pages = min(claimed, ramPages)
        let wordCount = Int((pages + 63) / 64)
        guard let bytes = try? memory.read(at: GuestAddress(address), count: wordCount * 8) else { return nil }
        let words = (0..<wordCount).map { word in
            bytes[word * 8..<word * 8 + 8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        }
        return WrittenPages(words: words, pageCount: pages, meansInUse: version >= inUseBitmapVersion)
    }
}

/// The embedded guest's record of the pages it has written: bit n of the
/// little-endian words is guest physical page n.  The guest sets a page's bit
/// (atomically, after publishing the page as being written) before it first
/// writes the page, so a set bit on an all-zero page means the page was lost.
public struct WrittenPages: Equatable, Sendable {
    let words: [UInt64]
    /// Pages covered, from page 0; pages past the end were never written.
    public let pageCount: UInt64
    /// Image version 3 on: a clear bit may also be a page the guest wrote and
    /// then freed, so a valid page without its bit is free memory, not a fault.
    public let meansInUse: Bool

    public init(words: [UInt64], pageCount: UInt64, meansInUse: Bool = false) {
        self.words = words
        self.pageCount = min(pageCount, UInt64(words.count) * 64)
        self.meansInUse = meansInUse
    }

    /// Whether the guest recorded writing page `index` (guest physical address / 4096).
    public func contains(_ index: UInt64) -> Bool {
        guard index < pageCount else { return false }
        return words[Int(index / 64)] & (1 << (index % 64)) != 0
    }
}

/// One heartbeat, as the guest's vCPU wrote it (64 bytes, little-endian).
public struct HeartbeatRecord: Equatable, Sendable {
    public var cpu: Int
    public var sequence: UInt64
    public var tsc: UInt64
    public var pagesWritten: UInt64
    public var verifyErrors: UInt64
    public var timerTicks: UInt64
    public var pass: UInt64
    public var firstErrorPage: UInt64

    public static let byteCount = 72

    /// Decodes a record; `nil` when the magic is wrong or the CPU number is absurd.
    public init?(bytes: [UInt8]) {
        guard bytes.count >= Self.byteCount else { return nil }
        func u64(_ at: Int) -> UInt64 { bytes[at..<at + 8].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        guard u32(0) == GuestABI.heartbeatMagic, u32(4) < 1024 else { return nil }
        cpu = Int(u32(4))
        sequence = u64(8)
        tsc = u64(16)
        pagesWritten = u64(24)
        verifyErrors = u64(32)
        timerTicks = u64(40)
        pass = u64(48)
        firstErrorPage = u64(56)
    }
}
