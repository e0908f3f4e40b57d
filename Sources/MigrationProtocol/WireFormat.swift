import CFrameChecksum

/// Little-endian encoding by shifting: no unsafe code, no Foundation.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }
    /// Direct access, for appending page bytes without an intermediate copy.
    public mutating func withBytes<R>(_ body: (inout [UInt8]) -> R) -> R { body(&bytes) }
    /// Empties the buffer, keeping its capacity.
    public mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(truncatingIfNeeded: v)); bytes.append(UInt8(truncatingIfNeeded: v >> 8)) }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func append<C: Collection>(_ data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }
    /// A string as u16 length + UTF-8 bytes.
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count))
        bytes += utf8
    }
}

/// Bounds-checked little-endian decoding over a byte array slice.
public struct WireReader: Sendable {
    let bytes: [UInt8]
    public private(set) var index: Int
    let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        index = range?.lowerBound ?? 0
        end = range?.upperBound ?? bytes.count
    }

    public var remaining: Int { end - index }
    public var isAtEnd: Bool { index == end }

    mutating func take(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .truncated(field()) }
        defer { index += count }
        return index..<index + count
    }

    public mutating func u8(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt8 { bytes[try take(1, field()).lowerBound] }
    public mutating func u16(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt16 { UInt16(try value(2, field())) }
    public mutating func u32(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt32 { UInt32(try value(4, field())) }
    public mutating func u64(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt64 { try value(8, field()) }

    public mutating func bytes(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> ArraySlice<UInt8> {
        bytes[try take(count, field())]
    }

    /// The index range of the next `count` bytes, consumed.
    public mutating func range(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> Range<Int> {
        try take(count, field())
    }

    public mutating func string(_ field: String) throws(ProtocolError) -> String {
        let length = Int(try u16(field + " length"))
        let raw = try bytes(length, field)
        guard let text = String(validating: raw, as: UTF8.self) else { throw .malformed("\(field) is not UTF-8") }
        return text
    }

    private mutating func value(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> UInt64 {
        let range = try take(count, field())
        var result: UInt64 = 0
        for i in range.reversed() { result = result << 8 | UInt64(bytes[i]) }
        return result
    }
}

/// The integrity check on every frame, built like XXH3's long-input loop:
/// eight 64-bit lanes over 64-byte blocks, each lane adding its neighbour's
/// word and the 32x32-bit product of its own word's halves, XORed first with a
/// key that advances every block (so moving a word to another block shows),
/// then the lanes folded, the tail bytes and the length mixed in, and a
/// splitmix finaliser.  Catches corruption, not tampering (use TLS).
///
/// Every byte is summed on both sides, so the loop's speed matters. In Swift the
/// lanes are one `SIMD8<UInt64>`, which compiles to plain SSE2 multiplies
/// (about 21 GB/s on one core over 1.5 GiB of warm memory, on an EPYC host of
/// this project); where the CPU has AVX2 the same loop runs in C with 256-bit
/// registers (about 33 GB/s on the same data). See `BlockLoop`.
public enum FrameChecksum {
    static let seed = SIMD8<UInt64>(0xcbf2_9ce4_8422_2325, 0x8422_2325_cbf2_9ce4, 0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f,
                                    0x1656_67b1_9e37_79f9, 0x27d4_eb2f_1656_67c5, 0x85eb_ca77_c2b2_ae63, 0xff51_afd7_ed55_8ccd)
    static let key = SIMD8<UInt64>(0xbe4b_a423_396c_feb8, 0x1cad_21f7_2c81_017c, 0xdb97_9083_e96d_d4de, 0x1f67_b3b7_a4a4_4072,
                                   0x78e5_c0cc_4ee6_79cb, 0x2172_ffcc_7dd0_5a82, 0x8e24_43f7_7446_08b8, 0x4c26_3a81_e690_35e0)

    public static func of(_ bytes: ArraySlice<UInt8>) -> UInt64 { of(bytes.span) }

    public static func of(_ bytes: Span<UInt8>, loop: BlockLoop = .fastest) -> UInt64 { scan(bytes, loop: loop).checksum }

    /// Which implementation of the block loop runs: `portable` is the Swift
    /// loop below (SSE2), `avx2` the same loop in C with 256-bit registers
    /// (CFrameChecksum), twice as fast where the CPU has it.  Both give the same
    /// sums; the tests hold them to each other and to fixed answers.
    public enum BlockLoop: Sendable, CaseIterable {
        case portable, avx2

        /// The fastest loop this CPU runs, decided once.
        public static let fastest: BlockLoop = ferry_checksum_has_avx2() != 0 ? .avx2 : .portable
    }

    /// The checksum of `first` followed by `second`, as `of` gives for their
    /// concatenation, without making it (a mapped-ram file's bitmap and checksum
    /// table, megabytes at a save's end, are summed where they lie).
    public static func of(_ first: RawSpan, then second: RawSpan, loop: BlockLoop = .fastest) -> UInt64 {
        var state = BlockState()
        let total = first.byteCount + second.byteCount
        let firstBlocks = first.byteCount / 64
        blocks(first, from: 0, count: firstBlocks, state: &state, loop: loop)
        let left = first.byteCount - firstBlocks * 64
        guard left > 0 else {
            let secondBlocks = second.byteCount / 64
            blocks(second, from: 0, count: secondBlocks, state: &state, loop: loop)
            return finish(state.lanes, tail: second, from: secondBlocks * 64, totalCount: total)
        }
        // The block that straddles the two parts, put together.
        let borrowed = min(64 - left, second.byteCount)
        var joint: [UInt8] = []
        joint.reserveCapacity(64)
        // SAFETY: RawSpan bounds-checks each load, and every bit pattern is a valid UInt8.
        for i in firstBlocks * 64..<first.byteCount { joint.append(unsafe first.unsafeLoad(fromByteOffset: i, as: UInt8.self)) }
        for i in 0..<borrowed { joint.append(unsafe second.unsafeLoad(fromByteOffset: i, as: UInt8.self)) }
        // SAFETY (`bytes` here and below): a span's bytes are unsafe only for elements with padding; UInt8 has none.
        guard joint.count == 64 else { return finish(state.lanes, tail: unsafe joint.span.bytes, from: 0, totalCount: total) }
        blocks(unsafe joint.span.bytes, from: 0, count: 1, state: &state, loop: loop)
        let secondBlocks = (second.byteCount - borrowed) / 64
        blocks(second, from: borrowed, count: secondBlocks, state: &state, loop: loop)
        return finish(state.lanes, tail: second, from: borrowed + secondBlocks * 64, totalCount: total)
    }

    /// The block loop's running state: the lanes, the next block's key, and the OR of the blocks seen.
    struct BlockState {
        var lanes = FrameChecksum.seed
        var keys = FrameChecksum.key
        var seen = SIMD8<UInt64>(repeating: 0)
    }

    /// The checksum, and the OR of every whole 64-byte block (zero detection).
    @inline(__always)
    static func scan(_ bytes: Span<UInt8>, loop: BlockLoop = .fastest) -> (checksum: UInt64, blocksOR: SIMD8<UInt64>) {
        var state = BlockState()
        let raw = unsafe bytes.bytes
        let blockCount = bytes.count / 64
        blocks(raw, from: 0, count: blockCount, state: &state, loop: loop)
        return (finish(state.lanes, tail: raw, from: blockCount * 64, totalCount: bytes.count), state.seen)
    }

    /// The block loop over `count` whole 64-byte blocks of `raw` from byte `start` on.
    @inline(__always)
    static func blocks(_ raw: RawSpan, from start: Int, count: Int, state: inout BlockState, loop: BlockLoop) {
        guard count > 0 else { return }
        precondition(start >= 0 && start + count * 64 <= raw.byteCount)
        if loop == .avx2 {
            precondition(ferry_checksum_has_avx2() != 0, "the AVX2 checksum loop on a CPU without AVX2")
            unsafe raw.withUnsafeBytes { buffer in
                // SAFETY: the C loop reads `count` whole blocks from `start`, all inside `buffer`
                // (checked above), and reads and writes eight UInt64 through each of the three
                // pointers, which address SIMD8<UInt64> values (eight contiguous UInt64).
                unsafe withUnsafeMutableBytes(of: &state.lanes) { lanes in
                    unsafe withUnsafeMutableBytes(of: &state.keys) { keys in
                        unsafe withUnsafeMutableBytes(of: &state.seen) { seen in
                            unsafe ferry_checksum_blocks_avx2(buffer.baseAddress! + start, count,
                                                              lanes.baseAddress!.assumingMemoryBound(to: UInt64.self),
                                                              keys.baseAddress!.assumingMemoryBound(to: UInt64.self),
                                                              seen.baseAddress!.assumingMemoryBound(to: UInt64.self))
                        }
                    }
                }
            }
        } else {
            portableBlocks(raw, from: start, end: start + count * 64, state: &state)
        }
    }

    /// The block loop in Swift: `SIMD8<UInt64>` lanes, which compile to plain SSE2.
    @inline(__always)
    static func portableBlocks(_ raw: RawSpan, from start: Int, end blocksEnd: Int, state: inout BlockState) {
        let low = SIMD8<UInt64>(repeating: 0xffff_ffff)
        let step = SIMD8<UInt64>(repeating: 0x9e37_79b9_7f4a_7c15)
        var (lanes, blockKey, seen) = (state.lanes, state.keys, state.seen)
        var i = start
        while i < blocksEnd {
            // SAFETY: RawSpan bounds-checks the load, and every bit pattern is a valid SIMD8<UInt64>.
            let data = unsafe raw.unsafeLoadUnaligned(fromByteOffset: i, as: SIMD8<UInt64>.self)
            let keyed = data ^ blockKey
            // Lane i takes lane i ^ 1: two half-vector moves, which compile to one
            // shuffle per register (building the vector lane by lane did not, and
            // made the loop half as fast).
            var neighbours = SIMD8<UInt64>()
            neighbours.evenHalf = data.oddHalf
            neighbours.oddHalf = data.evenHalf
            lanes = lanes &+ neighbours &+ (keyed & low) &* (keyed &>> 32)
            seen |= data
            blockKey = blockKey &+ step
            i += 64
        }
        (state.lanes, state.keys, state.seen) = (lanes, blockKey, seen)
    }

    /// The lanes folded, the bytes of `tail` from `start` on (fewer than a block) and
    /// the whole input's length mixed in, and the finaliser.
    @inline(__always)
    static func finish(_ lanes: SIMD8<UInt64>, tail: RawSpan, from start: Int, totalCount: Int) -> UInt64 {
        var i = start
        let prime: UInt64 = 0x100_0000_01b3
        @inline(__always) func rotate(_ x: UInt64, _ r: UInt64) -> UInt64 { x << r | x >> (64 - r) }
        var h: UInt64 = 0
        for lane in 0..<8 { h = (h ^ rotate(lanes[lane], UInt64(7 * lane + 1))) &* 0x9e37_79b9_7f4a_7c15 }
        // SAFETY: RawSpan bounds-checks each load, and every bit pattern is a valid UInt8.
        while i < tail.byteCount { h = (h ^ UInt64(unsafe tail.unsafeLoad(fromByteOffset: i, as: UInt8.self))) &* prime; i += 1 }
        h ^= UInt64(totalCount)
        h ^= h >> 30; h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27; h = h &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}

/// One pass over a page that a sender is about to send: its checksum and
/// whether it is all zero, from the same loads (so looking for zero pages
/// costs nothing beyond the checksum every page needs).
public struct PageScan: Equatable, Sendable {
    public let checksum: UInt64
    public let isZero: Bool

    public static func of(_ bytes: Span<UInt8>) -> PageScan {
        let (checksum, blocks) = FrameChecksum.scan(bytes)
        var zero = blocks == SIMD8<UInt64>(repeating: 0)
        if zero { for i in (bytes.count / 64) * 64..<bytes.count where bytes[i] != 0 { zero = false; break } }
        return PageScan(checksum: checksum, isZero: zero)
    }
}
