import GuestMemory

/// A file that pages are written to and read from at fixed offsets (a
/// mapped-ram file), from several threads at once.  Offsets count from the
/// file's base (`file:PATH,offset=N`).  As a `ByteChannel` it reads or writes
/// sequentially from a position set with `seek` (the device-state stream).
///
/// Page data may go through a second descriptor opened with O_DIRECT
/// (`direct-io`): `direct` asks for it, and buffers and offsets must then be
/// aligned to the page size (guest RAM always is).
public protocol PageFile: ByteChannel {
    /// Whether page data goes through an O_DIRECT descriptor.
    var isDirect: Bool { get }
    /// The file's length from the base.
    func length() throws(ChannelError) -> UInt64
    /// Writes every byte of `list` at `offset` (page data: on the O_DIRECT descriptor if there is one).
    func write(_ list: borrowing GatherList, at offset: UInt64) throws(ChannelError)
    /// Fills `list` from `offset` (page data, as `write`); `.endOfStream` if the file ends first.
    func read(into list: borrowing ScatterList, at offset: UInt64) throws(ChannelError)
    /// Metadata, always through the buffered descriptor.
    func write(_ bytes: RawSpan, at offset: UInt64) throws(ChannelError)
    func read(_ count: Int, at offset: UInt64) throws(ChannelError) -> [UInt8]
    /// Frees the blocks of `count` bytes at `offset`: they read back as zero.
    func punchHole(at offset: UInt64, count: UInt64) throws(ChannelError)
    /// Whether allocating `bytes` ahead of direct writes (`allocate`) pays on
    /// this file's file system, and it has room for them with plenty to spare.
    func allocationHelps(bytes: UInt64) -> Bool
    /// Gives the file blocks for `count` bytes at `offset` that read as zero
    /// (unwritten extents), before page data is written there.  After a
    /// failure part of the range may be allocated.
    func allocate(at offset: UInt64, count: UInt64) throws(ChannelError)
    func truncate(to length: UInt64) throws(ChannelError)
    /// Everything written so far is on the disk.
    func synchronize() throws(ChannelError)
    /// Where the sequential reads and writes continue.
    func seek(to offset: UInt64)
    /// Which file this is (device and inode), to tell whether a later save goes to the same one.
    var identity: FileIdentity { get throws(ChannelError) }
}

extension PageFile {
    /// Metadata, always through the buffered descriptor.
    func write(_ bytes: [UInt8], at offset: UInt64) throws(ChannelError) { try write(unsafe bytes.span.bytes, at: offset) }  // SAFETY: UInt8 has no padding
}

/// A file's device and inode numbers.
public struct FileIdentity: Equatable, Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64
    public init(device: UInt64, inode: UInt64) { (self.device, self.inode) = (device, inode) }
}
