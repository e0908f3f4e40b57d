import Testing
import Synchronization
@testable import GuestMemory

@Suite struct ChunkPopulatorTests {
    static let chunk = 2 << 20

    @Test("resident chunks are exactly those touched; the populator allocates only the chunks it is given")
    func populatesChosenChunks() async throws {
        let mapping = try HostMapping(byteCount: 8 << 20, backend: .anon)    // four 2 MiB chunks
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [])
        mapping.storeBytes(UnsafeRawBufferPointer(start: nil, count: 0), at: 0)   // no bytes: still nothing resident
        let one: [UInt8] = [1]
        one.withUnsafeBytes { mapping.storeBytes($0, at: 2 * Self.chunk + 4096) }
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [2])

        var wanted = DirtyBitmap(pageCount: 4)
        wanted[1] = true
        wanted[3] = true
        let populator = ChunkPopulator.start(mapping: mapping, chunks: wanted, chunkBytes: Self.chunk)
        let deadline = ContinuousClock.now + .seconds(30)
        while mapping.residentChunks(chunkBytes: Self.chunk).setPages != [1, 2, 3] {
            try #require(ContinuousClock.now < deadline, "chunks 1 and 3 never became resident")
            try await Task.sleep(for: .milliseconds(5))
        }
        populator.stop()
        populator.stop()      // idempotent
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [1, 2, 3], "chunk 0 was never asked for")
        mapping.withBytes(at: 3 * Self.chunk, count: Self.chunk) { #expect($0.allSatisfy { $0 == 0 }) }
    }

    @Test("a populator skips chunks the writer has passed")
    func skipsPassedChunks() throws {
        let mapping = try HostMapping(byteCount: 8 << 20, backend: .anon)
        var wanted = DirtyBitmap(pageCount: 4)
        wanted[0] = true
        let populator = ChunkPopulator(mapping: mapping, chunks: wanted, chunkBytes: Self.chunk)
        populator.writerReached(offset: 3 * Self.chunk)
        populator.runToEnd()
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == [])
    }
}
