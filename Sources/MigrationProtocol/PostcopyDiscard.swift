/// The `postcopy` frame's payload: per RAM block, the 4 KiB pages whose copy on
/// the destination is stale or missing at the switch (QEMU's discard set).
/// The destination drops them, so that the guest's first access faults and
/// asks for them; every other page it holds is the source's last copy.
///
///     postcopy := BlockBitmaps with a unit of 4 KiB
///
/// On hugetlb blocks the source marks whole huge pages (all 512 pages of any
/// huge page with one stale page), since a huge page is placed whole.
public struct PostcopyDiscard: Equatable, Sendable {
    public static let pageBytes: UInt32 = 4096
    /// Per block in configuration order: the page bitmap words.
    public let words: [[UInt64]]

    public init(words: [[UInt64]]) { self.words = words }

    public func encode() -> [UInt8] { BlockBitmaps(unitBytes: Self.pageBytes, words: words).encode() }

    /// Decodes and checks the set against the (already checked) RAM layout.
    public init(decoding payload: [UInt8], layout: [MigrationConfiguration.Block]) throws(ProtocolError) {
        words = try BlockBitmaps(decoding: payload, unitBytes: Self.pageBytes, layout: layout, what: "postcopy discard set", unit: "page").words
    }
}
