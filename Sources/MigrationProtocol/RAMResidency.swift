/// Which 2 MiB chunks of each RAM block hold memory on the source (pages in
/// RAM or in swap), sent once before the first page.  Chunks that are not resident are
/// zero on the source.  The destination allocates the resident chunks on a
/// helper thread ahead of the pages, so its receiving thread writes into memory
/// that is already there instead of taking a fault (and a page clear) per chunk.
///
///     residency := chunk_size u32 (2 MiB) | nblocks u16 | (nwords u32 | word u64 * nwords) * nblocks
///
/// Bit `i` of word `i / 64` (least significant first) is chunk `i`, the bytes
/// `[i * chunk_size, (i + 1) * chunk_size)` of the block; bits past the block's
/// last chunk are zero.
public struct RAMResidency: Equatable, Sendable {
    public static let chunkBytes: UInt32 = 2 << 20

    /// Per block in configuration order: the chunk bitmap words.
    public let words: [[UInt64]]

    public init(words: [[UInt64]]) { self.words = words }

    /// The number of chunks covering a block of `byteCount` bytes.
    public static func chunkCount(byteCount: UInt64) -> Int {
        Int((byteCount + UInt64(chunkBytes) - 1) / UInt64(chunkBytes))
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 6 + words.reduce(0) { $0 + 4 + 8 * $1.count })
        w.u32(Self.chunkBytes)
        w.u16(UInt16(words.count))
        for block in words {
            w.u32(UInt32(block.count))
            for word in block { w.u64(word) }
        }
        return w.bytes
    }

    /// Decodes and checks a residency against the (already checked) RAM layout:
    /// one bitmap per block, each exactly as long as the block needs, no bit past its end.
    public init(decoding payload: [UInt8], layout: [MigrationConfiguration.Block]) throws(ProtocolError) {
        var r = WireReader(payload)
        let chunk = try r.u32("residency chunk size")
        guard chunk == Self.chunkBytes else { throw .malformed("residency chunk size \(chunk), expected \(Self.chunkBytes)") }
        let count = Int(try r.u16("residency block count"))
        guard count == layout.count else { throw .malformed("residency for \(count) blocks, the configuration has \(layout.count)") }
        var words: [[UInt64]] = []
        for block in layout {
            let chunks = Self.chunkCount(byteCount: block.byteCount)
            let expected = (chunks + 63) / 64
            let n = Int(try r.u32("residency word count of block '\(block.name)'"))
            guard n == expected else { throw .malformed("residency of block '\(block.name)' has \(n) words, expected \(expected)") }
            var blockWords: [UInt64] = []
            blockWords.reserveCapacity(n)
            for index in 0..<n { blockWords.append(try r.u64("residency word \(index) of block '\(block.name)'")) }
            if chunks % 64 != 0, let last = blockWords.last, last >> UInt64(chunks % 64) != 0 {
                throw .malformed("residency of block '\(block.name)' marks chunks past its end")
            }
            words.append(blockWords)
        }
        guard r.isAtEnd else { throw .malformed("\(r.remaining) extra bytes after the residency") }
        self.words = words
    }
}
