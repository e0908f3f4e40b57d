/// A mapped-ram file as `ferry analyze` saw it: its header, each block's
/// regions and pages, its device state, and how its size compares with the RAM.
public struct MappedRAMAnalysis: Encodable, Equatable, Sendable {
    public struct Block: Encodable, Equatable, Sendable {
        public var name: String
        public var bytes: UInt64
        public var pageSize: UInt32
        public var bitmapOffset: UInt64
        public var checksumsOffset: UInt64
        public var pagesOffset: UInt64
        public var pages: Int
        /// Pages the file holds (bits set in the bitmap).
        public var present: Int?
        /// Pages it does not: zero in the guest, never written in the file.
        public var zero: Int?
        /// Whether the bitmap and checksum table match their checksum in the header.
        public var metadataOK: Bool?
        /// Present pages read back and compared with their checksums (0 with `--quick`).
        public var checkedPages: Int = 0
        public var corruptPageCount: Int = 0
    }

    public struct CorruptPage: Encodable, Equatable, Sendable {
        public var block: String
        public var page: Int
        /// Where the page lies in the file, from its base.
        public var fileOffset: UInt64
    }

    public var version: UInt32 = 0
    public var complete = false
    public var generation: UInt64 = 0
    public var pageSize: UInt32 = 0
    /// Bytes of the encoded header.
    public var headerBytes: UInt64 = 0
    public var stateOffset: UInt64 = 0
    public var stateLength: UInt64 = 0
    public var blocks: [Block] = []
    /// The RAM the blocks describe, and the file's size at most: its last region's end
    /// (the device state's).  A mapped-ram file never grows past it, however many passes a live save makes.
    public var ramBytes: UInt64 = 0
    public var layoutBytes: UInt64 = 0
    /// Whether the file's length is within `layoutBytes`.
    public var bounded = false
    public var corruptPages: [CorruptPage] = []
    public var corruptPageCount = 0
    /// Blocks whose metadata does not match its checksum (their pages cannot be checked).
    public var corruptMetadata: [String] = []
    /// Whether every present page was read and checked (not with `--quick`).
    public var pagesChecked = false
    public var deviceState: StreamAnalysis?

    public init() {}

    public var corruptionCount: Int { corruptPageCount + corruptMetadata.count + (deviceState?.corruptionCount ?? 0) }
}
