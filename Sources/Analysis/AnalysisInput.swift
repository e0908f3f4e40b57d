import Migration

/// What `ferry analyze` reads: positioned reads from a file (from its base,
/// `file:PATH,offset=N`), its length, and the bytes its file system allocated.
/// A `MigrationFile` in production; bytes in memory in tests and the fuzz target.
public struct AnalysisInput: Sendable {
    /// The file's length from its base.
    public let length: UInt64
    /// Bytes the file system has allocated for the file (`st_blocks`), if known:
    /// less than its length when it has holes.
    public let allocatedBytes: UInt64?
    let readAt: @Sendable (Int, UInt64) throws(ChannelError) -> [UInt8]

    public init(length: UInt64, allocatedBytes: UInt64?,
                read: @escaping @Sendable (Int, UInt64) throws(ChannelError) -> [UInt8]) {
        (self.length, self.allocatedBytes, readAt) = (length, allocatedBytes, read)
    }

    /// A file read through its `PageFile` interface (metadata reads on the buffered descriptor).
    public init(file: any PageFile, allocatedBytes: UInt64?) throws(ChannelError) {
        self.init(length: try file.length(), allocatedBytes: allocatedBytes) { count, offset throws(ChannelError) in
            try file.read(count, at: offset)
        }
    }

    /// A file held in memory: `bytes`, then zeros (a hole) up to `length`.
    public init(bytes: [UInt8], length: UInt64? = nil) {
        let total = max(length ?? 0, UInt64(bytes.count))
        self.init(length: total, allocatedBytes: UInt64(bytes.count)) { count, offset throws(ChannelError) in
            let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
            guard !overflow, end <= total else { throw .endOfStream }
            var out = [UInt8](repeating: 0, count: count)
            if offset < UInt64(bytes.count) {
                let from = Int(offset), to = Int(min(end, UInt64(bytes.count)))
                out.replaceSubrange(0..<to - from, with: bytes[from..<to])
            }
            return out
        }
    }

    /// Exactly `count` bytes at `offset`; `.endOfStream` if the file ends first.
    public func read(_ count: Int, at offset: UInt64) throws(ChannelError) -> [UInt8] {
        try readAt(count, offset)
    }
}
