import Migration

/// Opens a mapped-ram file for a save, on the migration thread: a
/// `MigrationFile` (with an O_DIRECT descriptor for page data if `direct`).
/// The file is not truncated here: the engine decides whether an incremental
/// save continues it.
public struct MappedRAMFileOpener: ChannelOpener {
    let path: String
    let offset: UInt64
    let direct: Bool
    /// Where `/dev/fdset/N` paths are found.
    let descriptors: DescriptorRegistry?

    public init(path: String, offset: UInt64, direct: Bool, descriptors: DescriptorRegistry? = nil) {
        (self.path, self.offset, self.direct, self.descriptors) = (path, offset, direct, descriptors)
    }

    public func open() throws(ChannelError) -> any ByteChannel {
        try MigrationFile.open(path: path, writing: true, direct: direct, base: offset, descriptors: descriptors)
    }

    public func cancel() {}
}
