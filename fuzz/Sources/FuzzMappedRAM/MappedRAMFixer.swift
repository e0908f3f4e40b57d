import FuzzSupport
import MigrationProtocol

/// What the `mappedram` target does to an input before running it, so
/// mutations reach the checks behind the checksums: in a file whose header's
/// fixed part is sane enough to follow, each block entry's metadata checksum
/// is set to that of the bitmap and checksum table it points at (where they lie
/// inside the input), the device-state stream's frames are fixed as the
/// `stream` target fixes them (`FrameFixer`), and last the header's own
/// checksum is set.  Field positions are `MappedRAMHeader`'s encoding.
enum MappedRAMFixer {
    static func fix(_ bytes: inout [UInt8]) {
        let fixed = MappedRAMFormat.fixedHeaderBytes
        guard bytes.count >= fixed, MappedRAMHeader.hasMagic(bytes) else { return }
        let count = Int(u32(bytes, 20))
        guard (1...MigrationConfiguration.maximumBlocks).contains(count) else { return }
        let length = MappedRAMHeader.byteCount(blocks: count)
        guard bytes.count >= length else { return }
        for block in 0..<count {
            let entry = fixed + block * MappedRAMFormat.entryBytes
            let byteCount = u64(bytes, entry + 64)
            let pageSize = UInt64(u32(bytes, entry + 72))
            guard pageSize >= 4096, pageSize.nonzeroBitCount == 1, byteCount / pageSize <= UInt64(bytes.count) else { continue }
            let pages = Int(byteCount / pageSize)
            guard let bitmap = region(bytes, at: u64(bytes, entry + 80), count: (pages + 63) / 64 * 8),
                  let sums = region(bytes, at: u64(bytes, entry + 88), count: pages * 8) else { continue }
            put(MappedRAMBlockIndex.checksum(bitmap: Array(bitmap), checksums: Array(sums)), into: &bytes, at: entry + 104)
        }
        let (stateOffset, stateLength) = (u64(bytes, 32), u64(bytes, 40))
        if let state = region(bytes, at: stateOffset, count: Int(clamping: stateLength)) {
            _ = FrameFixer.fix(&bytes[state.indices], truncatedLengthLimit: 1 << 20)
        }
        put(FrameChecksum.of(bytes[0..<length - 8]), into: &bytes, at: length - 8)
    }

    /// `count` bytes at `offset`, if they lie inside `bytes`.
    static func region(_ bytes: [UInt8], at offset: UInt64, count: Int) -> ArraySlice<UInt8>? {
        guard offset <= UInt64(bytes.count), count <= bytes.count - Int(offset) else { return nil }
        return bytes[Int(offset)..<Int(offset) + count]
    }

    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
    static func u64(_ bytes: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[at + $1]) << (8 * UInt64($1)) } }
    static func put(_ value: UInt64, into bytes: inout [UInt8], at: Int) {
        for i in 0..<8 { bytes[at + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }
}
