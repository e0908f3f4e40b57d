import Testing
@testable import GuestMemory

/// `residentChunks` on each backend: exactly the chunks written, none of the others.
/// (Pages pushed out to swap are covered by IntegrationTests/SwappedMemoryTests.)
@Suite struct ResidentChunksTests {
    static let chunk = 2 << 20
    /// Ten 2 MiB chunks, the last one short (1 MiB), so the mapping is 19 MiB.
    static let byteCount = 19 << 20
    /// Written: all of chunk 1, the last page of chunk 4, the first page of chunk 5, one page of the short chunk 9.
    static let writes = [1 * chunk, 1 * chunk + chunk - 4096, 4 * chunk + chunk - 4096, 5 * chunk, 9 * chunk + 8192]
    static let expected = [1, 4, 5, 9]

    static func written(_ backend: MemoryBackend) throws -> HostMapping {
        let mapping = try HostMapping(byteCount: UInt64(byteCount), backend: backend)
        #expect(mapping.residentChunks(chunkBytes: chunk).setPages == [], "a fresh mapping holds nothing")
        let page = [UInt8](repeating: 0xa5, count: 4096)
        for offset in writes { page.withUnsafeBytes { mapping.storeBytes($0, at: offset) } }
        page.withUnsafeBytes { raw in
            for offset in stride(from: chunk, to: 2 * chunk, by: 4096) { mapping.storeBytes(raw, at: offset) }
        }
        return mapping
    }

    @Test("exactly the written chunks are resident", arguments: [MemoryBackend.anon, .memfd])
    func writtenChunks(backend: MemoryBackend) throws {
        let mapping = try Self.written(backend)
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == Self.expected)
        #expect(mapping.residentChunks(chunkBytes: 4 << 20).setPages == [0, 2, 4], "coarser chunks: 1→0, 4 and 5→2, 9→4")
    }

    @Test("asked about some chunks, each path answers for exactly those", arguments: [MemoryBackend.anon, .memfd])
    func someChunks(backend: MemoryBackend) throws {
        let mapping = try Self.written(backend)
        let ranges = [3..<6, 0..<1, 2..<4, 5..<10, 9..<10, 8..<20]
        for range in ranges {
            let expected = Self.expected.filter(range.contains)
            #expect(mapping.residentChunks(chunkBytes: Self.chunk, among: range).setPages == expected, "chunks \(range)")
            let bytes = range.lowerBound * Self.chunk..<min(range.upperBound * Self.chunk, Self.byteCount)
            let chunks = range.clamped(to: 0..<10)
            #expect(mapping.mincoreChunks(chunkBytes: Self.chunk, chunks: chunks).setPages == expected)
            switch backend {
            case .anon:
                #expect(mapping.scannedChunks(chunkBytes: Self.chunk, bytes: bytes)?.setPages == expected, "PAGEMAP_SCAN, chunks \(range)")
                #expect(mapping.pagemapChunks(chunkBytes: Self.chunk, chunks: chunks)?.setPages == expected, "pagemap, chunks \(range)")
            case .memfd:
                #expect(mapping.dataExtentChunks(chunkBytes: Self.chunk, bytes: bytes)?.setPages == expected, "extents, chunks \(range)")
            case .hugetlb:
                break
            }
        }
    }

    @Test("anon: PAGEMAP_SCAN and the pagemap entries agree")
    func anonPathsAgree() throws {
        let mapping = try Self.written(.anon)
        let scanned = try #require(mapping.scannedChunks(chunkBytes: Self.chunk, bytes: 0..<Self.byteCount), "PAGEMAP_SCAN (Linux 6.7) failed")
        #expect(scanned.setPages == Self.expected)
        #expect(mapping.pagemapChunks(chunkBytes: Self.chunk, chunks: 0..<10)?.setPages == Self.expected)
        #expect(mapping.mincoreChunks(chunkBytes: Self.chunk, chunks: 0..<10).setPages == Self.expected, "nothing swapped: mincore agrees too")
    }

    @Test("memfd: the file's data extents")
    func memfdExtents() throws {
        let mapping = try Self.written(.memfd)
        #expect(mapping.dataExtentChunks(chunkBytes: Self.chunk, bytes: 0..<Self.byteCount)?.setPages == Self.expected)
        // A shared mapping's pages are file pages: they are the file's data whether or not this mapping maps them.
        #expect(mapping.mincoreChunks(chunkBytes: Self.chunk, chunks: 0..<10).setPages == Self.expected)
    }

    @Test("hugetlb: the touched 2 MiB pages", .enabled(if: HostMemory.freeHugePages2M >= 10, "needs ten free 2 MiB huge pages"))
    func hugetlbChunks() throws {
        let mapping = try HostMapping(byteCount: UInt64(20 << 20), backend: .hugetlb)
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [])
        let one: [UInt8] = [1]
        for offset in [3 * Self.chunk + 5, 7 * Self.chunk] { one.withUnsafeBytes { mapping.storeBytes($0, at: offset) } }
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [3, 7])
    }
}
