/// One bitmap per RAM block, one bit per unit of `unitBytes`: the wire form
/// the residency frame (2 MiB chunks) and the postcopy frame (4 KiB pages) share.
///
///     unit u32 | nblocks u16 | (nwords u32 | word u64 * nwords) * nblocks
///
/// Bit `i` of word `i / 64` (least significant first) is unit `i`, the bytes
/// `[i * unit, (i + 1) * unit)` of the block; bits past the block's last unit are zero.
public struct BlockBitmaps: Equatable, Sendable {
    public let unitBytes: UInt32
    /// Per block in configuration order: the bitmap words.
    public let words: [[UInt64]]

    public init(unitBytes: UInt32, words: [[UInt64]]) { (self.unitBytes, self.words) = (unitBytes, words) }

    /// The number of units covering a block of `byteCount` bytes.
    public static func unitCount(byteCount: UInt64, unitBytes: UInt32) -> Int {
        Int((byteCount + UInt64(unitBytes) - 1) / UInt64(unitBytes))
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 6 + words.reduce(0) { $0 + 4 + 8 * $1.count })
        w.u32(unitBytes)
        w.u16(UInt16(words.count))
        for block in words {
            w.u32(UInt32(block.count))
            for word in block { w.u64(word) }
        }
        return w.bytes
    }

    /// Decodes and checks bitmaps against the (already checked) RAM layout: the
    /// unit `unitBytes`, one bitmap per block, each exactly as long as the block
    /// needs, no bit past its end.  `what` names the frame and `unit` its units in errors.
    public init(decoding payload: [UInt8], unitBytes expected: UInt32, layout: [MigrationConfiguration.Block],
                what: String, unit: String) throws(ProtocolError) {
        var r = WireReader(payload)
        let size = try r.u32("\(what) \(unit) size")
        guard size == expected else { throw .malformed("\(what) \(unit) size \(size), expected \(expected)") }
        let count = Int(try r.u16("\(what) block count"))
        guard count == layout.count else { throw .malformed("\(what) for \(count) blocks, the configuration has \(layout.count)") }
        var words: [[UInt64]] = []
        for block in layout {
            let units = Self.unitCount(byteCount: block.byteCount, unitBytes: expected)
            let wanted = (units + 63) / 64
            let n = Int(try r.u32("\(what) word count of block '\(block.name)'"))
            guard n == wanted else { throw .malformed("\(what) of block '\(block.name)' has \(n) words, expected \(wanted)") }
            guard n * 8 <= r.remaining else { throw .truncated("\(what) word 0 of block '\(block.name)'") }
            var blockWords: [UInt64] = []
            blockWords.reserveCapacity(n)
            for index in 0..<n { blockWords.append(try r.u64("\(what) word \(index) of block '\(block.name)'")) }
            if units % 64 != 0, let last = blockWords.last, last >> UInt64(units % 64) != 0 {
                throw .malformed("\(what) of block '\(block.name)' marks \(unit)s past its end")
            }
            words.append(blockWords)
        }
        guard r.isAtEnd else { throw .malformed("\(r.remaining) extra bytes after the \(what)") }
        (unitBytes, self.words) = (expected, words)
    }
}
