/// Which 2 MiB chunks of each RAM block hold memory on the source (pages in
/// RAM or in swap), sent once before the first page.  Chunks that are not resident are
/// zero on the source.  The destination allocates the resident chunks on a
/// helper thread ahead of the pages, so its receiving thread writes into memory
/// that is already there instead of taking a fault (and a page clear) per chunk.
///
///     residency := BlockBitmaps with a unit of 2 MiB (chunk_size u32 | nblocks u16 | (nwords u32 | word u64 * nwords) * nblocks)
public struct RAMResidency: Equatable, Sendable {
    public static let chunkBytes: UInt32 = 2 << 20

    /// Per block in configuration order: the chunk bitmap words.
    public let words: [[UInt64]]

    public init(words: [[UInt64]]) { self.words = words }

    /// The number of chunks covering a block of `byteCount` bytes.
    public static func chunkCount(byteCount: UInt64) -> Int { BlockBitmaps.unitCount(byteCount: byteCount, unitBytes: chunkBytes) }

    public func encode() -> [UInt8] { BlockBitmaps(unitBytes: Self.chunkBytes, words: words).encode() }

    /// Decodes and checks a residency against the (already checked) RAM layout:
    /// one bitmap per block, each exactly as long as the block needs, no bit past its end.
    public init(decoding payload: [UInt8], layout: [MigrationConfiguration.Block]) throws(ProtocolError) {
        words = try BlockBitmaps(decoding: payload, unitBytes: Self.chunkBytes, layout: layout, what: "residency", unit: "chunk").words
    }
}
