@testable import Analysis
import MigrationProtocol

/// Streams and mapped-ram files built in memory with the production encoders.
enum Fixtures {
    static let block = MigrationConfiguration.Block(name: "pc.ram", byteCount: 64 * 4096, pageSize: 4096)
    static let configuration = MigrationConfiguration(blocks: [block], vcpuCount: 2)

    /// A page of data, different for each `n`.
    static func page(_ n: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ n &* 13 &+ 1) } }

    typealias Frame = (kind: FrameKind, payload: [UInt8], tail: [UInt8])

    /// A `pages` frame: data records (with the page's true checksum unless `lying`) and zero records.
    static func pages(data: [(offset: UInt64, page: [UInt8])], zero: [UInt64] = [], lying: Set<UInt64> = []) -> Frame {
        var index = PageIndexBuilder()
        var tail: [UInt8] = []
        for (offset, page) in data {
            let sum = FrameChecksum.of(page[...])
            index.append(block: 0, offset: offset, kind: .data, checksum: lying.contains(offset) ? sum ^ 1 : sum)
            tail += page
        }
        for offset in zero { index.append(block: 0, offset: offset, kind: .zero) }
        return (.pages, index.payload(), tail)
    }

    static func section(_ name: String, bytes: Int) -> Frame {
        (.section, StateSection(name: name, version: 1, state: (0..<bytes).map { UInt8(truncatingIfNeeded: $0) }).encode(), [])
    }

    /// What a stopped save sends: the configuration, residency, the channel plan, `pages`, two sections.
    static func frames(pages: [Frame], plan: ChannelPlan = ChannelPlan(multifd: 0)) -> [Frame] {
        [(.configuration, configuration.encode(), []), (.residency, RAMResidency(words: [[1]]).encode(), []),
         (.channels, plan.encode(), [])] + pages + [section("global", bytes: 1), section("cpu/0", bytes: 100)]
    }

    /// The stream: its header, the frames numbered in order, and the end.
    static func stream(_ frames: [Frame], channel: ChannelIdentity = .main) -> [UInt8] {
        var encoder = FrameEncoder()
        return StreamHeader.encode(channel) + frames.flatMap { encoder.frame($0.kind, payload: $0.payload, tail: $0.tail) } + encoder.end()
    }

    static func analyze(_ bytes: [UInt8], checkPages: Bool = true) -> FileAnalysis {
        MigrationFileAnalyzer.analyze(AnalysisInput(bytes: bytes), checkPages: checkPages)
    }

    /// A mapped-ram file as `MappedRAMSaver` lays it out: `present` pages of
    /// each block (offset -> bytes), its metadata, a complete header, and the
    /// device state (`state`, by default a configuration matching the blocks, the plan and two sections).
    static func mappedRAM(blocks: [MigrationConfiguration.Block], present: [[Int: [UInt8]]], complete: Bool = true,
                          state: [Frame]? = nil, edit: (inout MappedRAMHeader) -> Void = { _ in }) throws -> [UInt8] {
        let layout = try MappedRAMLayout(blocks: blocks)
        let frames = state ?? [(.configuration, MigrationConfiguration(blocks: blocks, vcpuCount: 1).encode(), []),
                               (.channels, ChannelPlan(multifd: 2, mappedRAM: true).encode(), []),
                               section("global", bytes: 1), section("serial", bytes: 12)]
        let stateBytes = stream(frames)
        var header = MappedRAMHeader(layout: layout, generation: 4, complete: complete, stateLength: UInt64(stateBytes.count))
        var file = [UInt8](repeating: 0, count: Int(layout.stateOffset))
        for (number, pages) in present.enumerated() {
            var index = MappedRAMBlockIndex(pageCount: layout.entries[number].pageCount)
            for (page, bytes) in pages {
                index[page] = true
                index.checksums[page] = FrameChecksum.of(bytes[...])
                let at = Int(layout.pageOffset(block: number, page: page))
                file.replaceSubrange(at..<at + bytes.count, with: bytes)
            }
            let (bitmap, sums) = index.encode()
            let entry = layout.entries[number]
            file.replaceSubrange(Int(entry.bitmapOffset)..<Int(entry.bitmapOffset) + bitmap.count, with: bitmap)
            file.replaceSubrange(Int(entry.checksumsOffset)..<Int(entry.checksumsOffset) + sums.count, with: sums)
            header.entries[number].metadataChecksum = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums)
        }
        edit(&header)
        let encoded = header.encode()
        file.replaceSubrange(0..<encoded.count, with: encoded)
        return file + stateBytes
    }
}
