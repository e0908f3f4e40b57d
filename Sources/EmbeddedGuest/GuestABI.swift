import GuestMemory

/// The contract between the embedded guest and the VMM; mirrors guest/embedded/layout.h.
public enum GuestABI {
    /// 32-bit out: guest physical address of a `HeartbeatRecord`.
    public static let heartbeatPort: UInt16 = 0x510
    /// 32-bit out: the exception vector that killed the guest.
    public static let panicPort: UInt16 = 0x511
    /// The first guest physical address the workload writes.
    public static let workBase: UInt64 = 0x40_0000
    /// "FERRYPG1", the first word of every page the workload wrote.
    public static let pageMagic: UInt64 = 0x3147_5059_5252_4546
    public static let heartbeatMagic: UInt32 = 0x3154_4248
    public static let pageWords = 512
    /// Where the image header sits (the ELF's load address), and its fields.
    public static let imageHeaderAddress: UInt64 = 0x10_0000
    static let imageHeaderMagic = Array("FERRYGST".utf8)
    static let maximumCPUsOffset: UInt64 = 12
    static let perCPUOffset: UInt64 = 24
    static let perCPUSize: UInt64 = 256
    static let writingOffset: UInt64 = 40

    /// The pages the guest's vCPUs are writing right now (at most one each),
    /// read from their per-CPU blocks.  A paused guest may have one half
    /// written; the verifier sets these aside.  Empty if the embedded guest is
    /// not what runs.
    public static func pagesBeingWritten(in memory: GuestMemoryMap) -> Set<GuestAddress> {
        guard (try? memory.read(at: GuestAddress(imageHeaderAddress), count: 8)) == imageHeaderMagic,
              let cpus = try? memory.readUInt32(at: GuestAddress(imageHeaderAddress + maximumCPUsOffset)),
              let perCPU = try? memory.readUInt64(at: GuestAddress(imageHeaderAddress + perCPUOffset)) else { return [] }
        var pages = Set<GuestAddress>()
        for cpu in 0..<UInt64(min(cpus, 256)) {
            if let writing = try? memory.readUInt64(at: GuestAddress(perCPU + cpu * perCPUSize + writingOffset)), writing != 0 {
                pages.insert(GuestAddress(writing - 1))
            }
        }
        return pages
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
