import FuzzSupport
import MigrationProtocol

/// The `mappedram` seed corpus, built with the production encoders
/// (`MappedRAMLayout`, `MappedRAMHeader`, `MappedRAMBlockIndex`, `FrameEncoder`),
/// so that after a format change `FuzzMappedRAM --make-seeds fuzz/corpus/mappedram`
/// regenerates valid seeds.  The files are compact (see `FuzzMappedRAM`).
enum MappedRAMSeeds {
    static func write(to directory: String) { SeedFiles.write(all(), to: directory) }

    static let twoBlocks = [MigrationConfiguration.Block(name: "pc.ram", byteCount: 4 * 4096, pageSize: 4096),
                            MigrationConfiguration.Block(name: "vga.ram", byteCount: 2 * 4096, pageSize: 4096)]

    static func all() -> [(String, [UInt8])] {
        let complete = file(twoBlocks, present: [[0, 1, 3], [1]])
        return [
            ("complete", complete),
            ("all-present", file([twoBlocks[0]], present: [Array(0..<4)])),
            ("all-zero", file(twoBlocks, present: [[], []])),
            ("incomplete", file(twoBlocks, present: [[0], []], complete: false)),
            ("corrupt-page", file(twoBlocks, present: [[2, 3], [0]], corrupt: true)),
            ("many-blocks", file((0..<5).map { .init(name: "ram\($0)", byteCount: 4096, pageSize: 4096) },
                                 present: (0..<5).map { $0 % 2 == 0 ? [0] : [] })),
            ("truncated", Array(complete.prefix(complete.count - 100))),
        ]
    }

    /// A page of data, different for each block and page.
    static func page(_ block: Int, _ page: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 / 16 + block * 31 + page * 7) } }

    /// A compact mapped-ram file with `present` pages of each block, and its device state.
    static func file(_ blocks: [MigrationConfiguration.Block], present: [[Int]], complete: Bool = true, corrupt: Bool = false) -> [UInt8] {
        guard let layout = try? MappedRAMLayout(blocks: blocks) else { fatalError("seed blocks") }
        var encoder = FrameEncoder()
        let state = StreamHeader.encode()
            + encoder.frame(.configuration, payload: MigrationConfiguration(blocks: blocks, vcpuCount: 1).encode())
            + encoder.frame(.channels, payload: ChannelPlan(multifd: 1, mappedRAM: true).encode())
            + encoder.frame(.section, payload: StateSection(name: "global", version: 1, state: [1]).encode())
            + encoder.frame(.section, payload: StateSection(name: "cpu/0", version: 1, state: Array(0..<64)).encode())
            + encoder.end()
        var header = MappedRAMHeader(layout: layout, generation: 2, complete: complete, stateLength: UInt64(state.count))
        // Metadata packed after the header, 8-byte aligned; page areas 4 KiB-aligned after it.
        var position = UInt64(MappedRAMHeader.byteCount(blocks: blocks.count) + 7) / 8 * 8
        for i in header.entries.indices {
            header.entries[i].bitmapOffset = position
            position += header.entries[i].bitmapBytes
            header.entries[i].checksumsOffset = position
            position += header.entries[i].checksumBytes
        }
        position = (position + 4095) / 4096 * 4096
        for i in header.entries.indices {
            header.entries[i].pagesOffset = position
            position += header.entries[i].byteCount
        }
        header.stateOffset = position
        var bytes = [UInt8](repeating: 0, count: Int(position))
        for (number, pages) in present.enumerated() {
            let entry = header.entries[number]
            var index = MappedRAMBlockIndex(pageCount: entry.pageCount)
            for p in pages {
                let data = page(number, p)
                index[p] = true
                index.checksums[p] = FrameChecksum.of(data[...]) ^ (corrupt && p == pages.first ? 1 : 0)
                let at = Int(entry.pagesOffset) + p * 4096
                bytes.replaceSubrange(at..<at + 4096, with: data)
            }
            let (bitmap, sums) = index.encode()
            bytes.replaceSubrange(Int(entry.bitmapOffset)..<Int(entry.bitmapOffset) + bitmap.count, with: bitmap)
            bytes.replaceSubrange(Int(entry.checksumsOffset)..<Int(entry.checksumsOffset) + sums.count, with: sums)
            header.entries[number].metadataChecksum = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums)
        }
        let encoded = header.encode()
        bytes.replaceSubrange(0..<encoded.count, with: encoded)
        return bytes + state
    }
}
