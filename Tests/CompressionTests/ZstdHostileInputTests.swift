import Testing
@testable import Compression

/// A hostile peer's frames: each must be refused with its own error, never
/// decoded to bytes of the wrong size, and never allowed to grow the output
/// beyond the expected size.
@Suite struct ZstdHostileInputTests {
    static let mebibyte = 1 << 20

    @Test("a bomb (64 MiB of zeros in a few KiB) is refused from its header, before anything is allocated")
    func bombRefusedByHeader() throws {
        let zeros = [UInt8](repeating: 0, count: 64 * Self.mebibyte)
        let compressor = try ZstdCompressor()
        let frameSize = try compressor.compress(zeros.span)
        #expect(frameSize < 64 << 10)
        let bomb = compressor.withOutput { [UInt8](copying: $0) }
        var output: [UInt8] = []
        #expect(throws: CompressionError.contentSizeMismatch(declared: UInt64(64 * Self.mebibyte), expected: Self.mebibyte)) {
            try ZstdDecompressor().decompress(bomb.span, expectedSize: Self.mebibyte, into: &output)
        }
        #expect(output.isEmpty && output.capacity == 0)
    }

    @Test("a bomb whose header lies (declares 1 MiB, holds 64 MiB) stops at the expected size")
    func lyingBomb() throws {
        let zeros = [UInt8](repeating: 0, count: 64 * Self.mebibyte)
        let compressor = try ZstdCompressor()
        try compressor.compress(zeros.span)
        var bomb = compressor.withOutput { [UInt8](copying: $0) }
        patchContentSize(&bomb, to: UInt64(Self.mebibyte))
        var output: [UInt8] = []
        #expect(throws: CompressionError.outputExceedsExpectedSize(expected: Self.mebibyte)) {
            try ZstdDecompressor().decompress(bomb.span, expectedSize: Self.mebibyte, into: &output)
        }
        #expect(output.isEmpty && output.capacity < 2 * Self.mebibyte)
    }

    @Test("a frame of another size than expected is refused, smaller or larger")
    func wrongDeclaredSize() throws {
        let frame = try compressPages(mixedPages(16))
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        for expected in [15 * 4096, 17 * 4096, 0] {
            #expect(throws: CompressionError.contentSizeMismatch(declared: 16 * 4096, expected: expected)) {
                try decompressor.decompress(frame.span, expectedSize: expected, into: &output)
            }
            #expect(output.isEmpty)
        }
    }

    @Test("a header that declares more than its blocks hold decodes short and is refused")
    func shortOutput() throws {
        let pages = mixedPages(256)
        var frame = try compressPages(pages)
        patchContentSize(&frame, to: UInt64(256 * 4096 + 4096))
        var output: [UInt8] = []
        #expect(throws: CompressionError.corrupt("Data corruption detected")) {
            try ZstdDecompressor().decompress(frame.span, expectedSize: 256 * 4096 + 4096, into: &output)
        }
        #expect(output.isEmpty)
    }

    @Test("input cut short anywhere is refused as truncated")
    func truncated() throws {
        let frame = try compressPages(mixedPages(16))
        let headerSize = try ZstdFrameHeader(parsing: frame.span).byteCount
        let cuts = [0, 1, 3, 4, 5, headerSize - 1, headerSize, headerSize + 1, headerSize + 3, frame.count / 3, frame.count / 2,
                    frame.count - 5, frame.count - 4, frame.count - 1]
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        for cut in cuts {
            #expect(throws: CompressionError.truncated, "cut at \(cut) of \(frame.count)") {
                try decompressor.decompress(frame[0..<cut].span, expectedSize: 16 * 4096, into: &output)
            }
            #expect(output.isEmpty)
        }
    }

    /// Every single-byte flip is refused, or decodes to exactly the original
    /// (a flip zstd's format cannot see, such as a larger window): the content
    /// checksum leaves no flip that decodes to other bytes.
    @Test("a flipped byte anywhere is refused or harmless, never wrong output")
    func flippedBytes() throws {
        let pages = mixedPages(16)
        let original = pages.flatMap { $0 }
        let frame = try compressPages(pages)
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        var refused = 0
        var checksumCatches = 0
        for position in 0..<frame.count {
            var corrupt = frame
            corrupt[position] ^= 0x10
            do {
                try decompressor.decompress(corrupt.span, expectedSize: original.count, into: &output)
                #expect(output == original, "flip at \(position) decoded to other bytes")
            } catch {
                refused += 1
                if error == .checksumMismatch { checksumCatches += 1 }
                #expect(output.isEmpty)
            }
        }
        #expect(refused >= frame.count - 8)
        #expect(checksumCatches > 0)   // flips in literals decode fine; only the checksum catches them
    }

    @Test("a frame without a content checksum is refused")
    func missingChecksum() throws {
        var frame = try compressPages(mixedPages(4))
        frame[4] &= ~0x04
        var output: [UInt8] = []
        #expect(throws: CompressionError.missingChecksum) {
            try ZstdDecompressor().decompress(frame.span, expectedSize: 4 * 4096, into: &output)
        }
    }

    @Test("garbage after the frame is refused, and so is a second frame")
    func trailingBytes() throws {
        let frame = try compressPages(mixedPages(4))
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        #expect(throws: CompressionError.trailingBytes(count: 2)) {
            try decompressor.decompress((frame + [0xde, 0xad]).span, expectedSize: 4 * 4096, into: &output)
        }
        #expect(throws: CompressionError.multipleFrames) {
            try decompressor.decompress((frame + frame).span, expectedSize: 4 * 4096, into: &output)
        }
        let skippable: [UInt8] = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]
        #expect(throws: CompressionError.multipleFrames) {
            try decompressor.decompress((frame + skippable).span, expectedSize: 4 * 4096, into: &output)
        }
        #expect(output.isEmpty)
        try decompressor.decompress(frame.span, expectedSize: 4 * 4096, into: &output)   // and then a good one
        #expect(output == mixedPages(4).flatMap { $0 })
    }

    @Test("input that is not a zstd frame is refused")
    func notAFrame() throws {
        let decompressor = try ZstdDecompressor()
        var output: [UInt8] = []
        #expect(throws: CompressionError.notAZstdFrame(magic: 0x0403_0201)) {
            try decompressor.decompress([1, 2, 3, 4, 5, 6, 7, 8].span, expectedSize: 4096, into: &output)
        }
        #expect(throws: CompressionError.notAZstdFrame(magic: 0x184D_2A50)) {
            try decompressor.decompress([0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0].span, expectedSize: 0, into: &output)
        }
    }

    @Test("a frame asking for a window above the decoder's limit is refused")
    func windowLimit() throws {
        let frame = try compressPages(mixedPages(16))
        var output: [UInt8] = []
        #expect(throws: CompressionError.windowTooLarge(windowSize: 16 * 4096, limit: 1024)) {
            try ZstdDecompressor(maxWindowLog: 10).decompress(frame.span, expectedSize: 16 * 4096, into: &output)
        }
        #expect(throws: CompressionError.invalidWindowLog(9, supported: 10...31)) { try ZstdDecompressor(maxWindowLog: 9) }
    }

    @Test("decoding into a span of guest-page size writes exactly that span")
    func mutableSpan() throws {
        let pages = mixedPages(4)
        let frame = try compressPages(pages)
        var target = [UInt8](repeating: 0xee, count: 4 * 4096)
        var span = target.mutableSpan
        try ZstdDecompressor().decompress(frame.span, into: &span)
        #expect(target == pages.flatMap { $0 })
    }
}
