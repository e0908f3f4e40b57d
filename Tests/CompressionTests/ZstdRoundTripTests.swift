import Testing
@testable import Compression

@Suite struct ZstdRoundTripTests {
    @Test("256 mixed pages survive a round trip, frame after frame with reused contexts", arguments: [1, 19])
    func roundTrip(level: Int) throws {
        let compressor = try ZstdCompressor(level: level)
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        for seed: UInt64 in [1, 2] {
            let pages = mixedPages(256, seed: seed)
            let frame = try compressPages(pages, with: compressor)
            try decompressor.decompress(frame.span, expectedSize: 256 * 4096, into: &output)
            #expect(output == pages.flatMap { $0 })
        }
    }

    @Test("levels 0 and 20, the ends of multifd-zstd-level, work", arguments: [0, 20])
    func levelBounds(level: Int) throws {
        let pages = mixedPages(9)
        var output: [UInt8] = []
        let frame = try compressPages(pages, level: level)
        try ZstdDecompressor().decompress(frame.span, expectedSize: 9 * 4096, into: &output)
        #expect(output == pages.flatMap { $0 })
    }

    @Test("levels outside 0...20 are refused")
    func invalidLevels() {
        #expect(throws: CompressionError.invalidLevel(21, supported: 0...20)) { try ZstdCompressor(level: 21) }
        #expect(throws: CompressionError.invalidLevel(-1, supported: 0...20)) { try ZstdCompressor(level: -1) }
    }

    @Test("sizes covering every width of the header's content-size field round-trip, and the header parser reads them",
          arguments: [0, 1, 255, 256, 4096, 65791, 65792, 300_000])
    func sizes(byteCount: Int) throws {
        var generator = SeededGenerator(state: UInt64(byteCount))
        let input = (0..<byteCount).map { _ in UInt8.random(in: 0...3, using: &generator) }
        let compressor = try ZstdCompressor()
        try compressor.compress(input.span)
        let frame = compressor.withOutput { [UInt8](copying: $0) }
        let header = try ZstdFrameHeader(parsing: frame.span)
        #expect(header.contentSize == UInt64(byteCount))
        #expect(header.hasChecksum)
        #expect(header.dictionaryID == 0)
        var output: [UInt8] = [1, 2, 3]
        try ZstdDecompressor().decompress(frame.span, expectedSize: byteCount, into: &output)
        #expect(output == input)
    }

    @Test("compressible pages shrink; incompressible ones stay within zstd's bound")
    func compressionShrinks() throws {
        var generator = SeededGenerator(state: 7)
        let compressible = (0..<256).map { page($0 % 2 == 0 ? .text : .zero, index: $0, generator: &generator) }
        let frame = try compressPages(compressible)
        #expect(frame.count < 256 * 4096 / 20)
        let random = (0..<64).map { page(.random, index: $0, generator: &generator) }
        let randomFrame = try compressPages(random)
        #expect(randomFrame.count <= 64 * 4096 + 64 * 4096 / 128 + 64)
    }

    @Test("the frame must hold exactly the pledged bytes")
    func pledgedSize() throws {
        let compressor = try ZstdCompressor()
        let zero = [UInt8](repeating: 0, count: 4096)
        try compressor.begin(totalBytes: 8192)
        try compressor.append(zero.span)
        #expect(throws: CompressionError.pledgedSizeMismatch(pledged: 8192, appended: 4096)) { try compressor.finish() }
        try compressor.begin(totalBytes: 4096)
        try compressor.append(zero.span)
        #expect(throws: CompressionError.pledgedSizeMismatch(pledged: 4096, appended: 8192)) { try compressor.append(zero.span) }
        // After a refusal the compressor starts over cleanly.
        let frameSize = try compressor.compress(zero.span)
        #expect(frameSize > 0)
    }

    @Test("errors read clearly")
    func descriptions() {
        #expect(CompressionError.contentSizeMismatch(declared: 67_108_864, expected: 1_048_576).description
                == "zstd frame declares 67108864 decompressed bytes where 1048576 were expected")
        #expect(CompressionError.invalidLevel(21, supported: 0...20).description
                == "zstd level 21 is out of range (multifd-zstd-level takes 0...20)")
        #expect(CompressionError.trailingBytes(count: 2).description == "2 bytes of garbage follow the zstd frame")
    }
}
