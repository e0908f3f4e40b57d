import GuestMemory
import MigrationProtocol

/// A mapped-ram file opened for a restore: its header and per-block metadata,
/// checked against this machine's RAM before a page is read.
public struct MappedRAMImage: Sendable {
    public let header: MappedRAMHeader
    public let indexes: [MappedRAMBlockIndex]

    /// Reads and checks the header and metadata of `file` for `blocks`.
    public init(file: any PageFile, blocks: [MigrationConfiguration.Block]) throws(MigrationError) {
        let header = try Self.readHeader(of: file, for: blocks)
        var indexes: [MappedRAMBlockIndex] = []
        for entry in header.entries {
            indexes.append(try Self.readIndex(entry, bitmap: try Self.readBitmap(entry, of: file), of: file))
        }
        (self.header, self.indexes) = (header, indexes)
    }

    public var presentPages: Int { indexes.reduce(0) { $0 + $1.presentCount } }

    /// Reads and checks the header of `file`: complete, its regions inside the
    /// file and apart, its blocks this machine's.
    public static func readHeader(of file: any PageFile, for blocks: [MigrationConfiguration.Block]) throws(MigrationError) -> MappedRAMHeader {
        try reading {
            let length = try file.length()
            guard length >= UInt64(MappedRAMFormat.fixedHeaderBytes) else {
                throw MigrationError.stream(.truncated("the file is \(length) bytes, shorter than a mapped-ram header"))
            }
            let prefix = try file.read(MappedRAMFormat.fixedHeaderBytes, at: 0)
            let total: Int
            do { total = try MappedRAMHeader.totalByteCount(prefix: prefix) } catch let error as ProtocolError {
                if error == .badMagic { throw MigrationError.stream(.malformed("not a Ferry mapped-ram file (bad magic): was it saved with the mapped-ram capability?")) }
                throw MigrationError.stream(error)
            }
            do {
                let header = try MappedRAMHeader(decoding: try file.read(total, at: 0), fileLength: length)
                guard header.isComplete else {
                    throw MigrationError.stream(.incomplete("the mapped-ram file's save did not complete (the header is not marked complete)"))
                }
                try header.check(against: blocks)
                return header
            } catch let error as ProtocolError { throw MigrationError.stream(error) }
        }
    }

    /// One block's bitmap as the file holds it (its region checked by `readHeader`).
    public static func readBitmap(_ entry: MappedRAMBlockEntry, of file: any PageFile) throws(MigrationError) -> [UInt8] {
        try reading { try file.read(Int(entry.bitmapBytes), at: entry.bitmapOffset) }
    }

    /// One block's index: `bitmap` and the checksum table read from `file`,
    /// both checked against the entry's metadata checksum.
    public static func readIndex(_ entry: MappedRAMBlockEntry, bitmap: [UInt8], of file: any PageFile) throws(MigrationError) -> MappedRAMBlockIndex {
        try reading {
            let sums = try file.read(Int(entry.checksumBytes), at: entry.checksumsOffset)
            do { return try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry) } catch let error as ProtocolError {
                throw MigrationError.stream(error)
            }
        }
    }

    /// `body`'s errors as a restore reports them: a file that ends inside its
    /// metadata is truncated.
    private static func reading<T>(_ body: () throws -> T) throws(MigrationError) -> T {
        do { return try body() } catch let error as MigrationError {
            throw error
        } catch let error as ChannelError {
            if error == .endOfStream { throw .stream(.truncated("the mapped-ram file ends inside its metadata")) }
            throw .channel(error)
        } catch {
            throw .state("\(error)")
        }
    }
}
