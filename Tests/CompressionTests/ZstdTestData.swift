@testable import Compression

/// A seeded generator, so every run compresses the same bytes (SplitMix64).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

enum PageKind: CaseIterable { case random, text, zero }

/// A 4 KiB page of `kind`: incompressible, text-like, or zero.
func page(_ kind: PageKind, index: Int, generator: inout SeededGenerator) -> [UInt8] {
    switch kind {
    case .random:
        return (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
    case .text:
        var text: [UInt8] = []
        var line = 0
        while text.count < 4096 {
            text += Array("page \(index) line \(line): the quick brown fox jumps over \(line * 7919 % 1000) lazy dogs\n".utf8)
            line += 1
        }
        return Array(text[0..<4096])
    case .zero:
        return [UInt8](repeating: 0, count: 4096)
    }
}

/// `count` pages cycling random, text-like and zero.
func mixedPages(_ count: Int, seed: UInt64 = 1) -> [[UInt8]] {
    var generator = SeededGenerator(state: seed)
    return (0..<count).map { page(PageKind.allCases[$0 % 3], index: $0, generator: &generator) }
}

extension Array where Element == UInt8 {
    init(copying span: Span<UInt8>) {
        self.init()
        reserveCapacity(span.count)
        for index in span.indices { append(span[index]) }
    }
}

/// One frame of `pages`, appended a page at a time as the multifd sender does.
func compressPages(_ pages: [[UInt8]], with compressor: ZstdCompressor) throws -> [UInt8] {
    try compressor.begin(totalBytes: pages.reduce(0) { $0 + $1.count })
    for page in pages { try compressor.append(page.span) }
    try compressor.finish()
    return compressor.withOutput { [UInt8](copying: $0) }
}

func compressPages(_ pages: [[UInt8]], level: Int = ZstdCompressor.defaultLevel) throws -> [UInt8] {
    try compressPages(pages, with: ZstdCompressor(level: level))
}

/// Rewrites the frame header's content-size field (RFC 8878, 3.1.1.1.4) to `size`.
func patchContentSize(_ frame: inout [UInt8], to size: UInt64) {
    let descriptor = frame[4]
    let singleSegment = descriptor & 0x20 != 0
    let offset = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][Int(descriptor & 0x03)]
    let width = descriptor >> 6 == 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][Int(descriptor >> 6)]
    precondition(width >= 4, "the test needs a 4- or 8-byte content-size field")
    for byte in 0..<width { frame[offset + byte] = UInt8(truncatingIfNeeded: size >> (8 * UInt64(byte))) }
}
