import Testing
@testable import MigrationProtocol

/// FrameChecksum is part of the stream and file formats: its sums must not
/// change between builds or between the Swift and AVX2 block loops.
@Suite("frame checksum")
struct FrameChecksumTests {
    static func pattern(_ count: Int, _ multiplier: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* multiplier &+ 7) }
    }

    /// The loops this CPU can run; the AVX2 one only where it has AVX2.
    static var loops: [FrameChecksum.BlockLoop] { FrameChecksum.BlockLoop.fastest == .avx2 ? [.portable, .avx2] : [.portable] }

    // Computed by the Swift loop as it stood before the AVX2 loop existed (commit 6103818).
    @Test("fixed answers: the format's checksum is unchanged, by every loop", arguments: [
        (0, 1, 0x988f_88e2_c7ba_9f29 as UInt64), (1, 0, 0xbc8a_ace9_472c_656f), (63, 131, 0x95ea_d11e_c2b4_b94e),
        (64, 131, 0xda39_dd44_7420_0589), (65, 131, 0x1e6a_d119_110c_e7f1), (4096, 131, 0xb38b_7b55_2c08_143d),
        (4096, 0, 0xa70e_8c79_6b65_9e57), (4097, 29, 0xd081_3866_10f8_6209), (10000, 251, 0xc90f_ecd8_16bf_a4e6),
    ])
    func knownAnswers(count: Int, multiplier: Int, expected: UInt64) {
        let bytes = Self.pattern(count, multiplier)
        for loop in Self.loops {
            #expect(FrameChecksum.of(bytes.span, loop: loop) == expected, "\(loop), \(count) bytes")
        }
    }

    @Test("the AVX2 and Swift loops agree on sums and zero detection, over random data of every length to 300 bytes and whole pages")
    func loopsAgree() {
        guard FrameChecksum.BlockLoop.fastest == .avx2 else { return }  // nothing to compare on a CPU without AVX2
        var generator = SystemRandomNumberGenerator()
        let lengths = Array(0...300) + [4096, 4095, 4097, 65536]
        for length in lengths {
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if length % 3 == 0 { for i in bytes.indices where i % 64 != 17 { bytes[i] = 0 } }  // mostly zero: the OR must see one byte
            let portable = FrameChecksum.scan(bytes.span, loop: .portable)
            let avx2 = FrameChecksum.scan(bytes.span, loop: .avx2)
            #expect(portable.checksum == avx2.checksum, "\(length) bytes")
            #expect(portable.blocksOR == avx2.blocksOR, "\(length) bytes")
        }
        let zero = [UInt8](repeating: 0, count: 4096)
        #expect(FrameChecksum.scan(zero.span, loop: .avx2).blocksOR == SIMD8(repeating: 0))
    }

    @Test("the sum of two parts is the sum of their concatenation, wherever the parts split a block, by every loop")
    func twoParts() {
        var generator = SystemRandomNumberGenerator()
        let whole = (0..<400).map { _ in UInt8.random(in: 0...255, using: &generator) }
        for loop in Self.loops {
            for length in [0, 1, 63, 64, 65, 127, 128, 200, 400] {
                let bytes = Array(whole[..<length])
                let expected = FrameChecksum.of(bytes.span, loop: loop)
                for split in Set([0, 1, 7, 8, 63, 64, 65, 100, 129, length / 2, length - 1, length]) where split >= 0 && split <= length {
                    let first = Array(bytes[..<split]), second = Array(bytes[split...])
                    #expect(FrameChecksum.of(first.span.bytes, then: second.span.bytes, loop: loop) == expected,
                            "\(loop), \(length) bytes split at \(split)")
                }
            }
        }
        // A mapped-ram block's metadata: a bitmap of words and a table of sums.
        let bitmap = FrameChecksumTests.pattern(8 * 7, 13), table = FrameChecksumTests.pattern(8 * 448, 29)
        #expect(FrameChecksum.of(bitmap.span.bytes, then: table.span.bytes) == FrameChecksum.of((bitmap + table).span))
    }

    @Test("the AVX2 loop sees every single-bit flip of a page")
    func avx2SeesFlips() {
        let page = Self.pattern(4096, 131)
        for loop in Self.loops {
            let original = FrameChecksum.of(page.span, loop: loop)
            for index in stride(from: 0, to: 4096, by: 61) {
                for bit in 0..<8 {
                    var flipped = page
                    flipped[index] ^= 1 << bit
                    #expect(FrameChecksum.of(flipped.span, loop: loop) != original, "\(loop): byte \(index) bit \(bit)")
                }
            }
        }
    }
}
