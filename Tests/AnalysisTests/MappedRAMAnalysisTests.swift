@testable import Analysis
import MigrationProtocol
import Testing

/// `ferry analyze` on mapped-ram files built in memory as `MappedRAMSaver` lays them out.
@Suite struct MappedRAMAnalysisTests {
    typealias F = Fixtures
    static let blocks = [F.block, MigrationConfiguration.Block(name: "vga.ram", byteCount: 16 * 4096, pageSize: 4096)]
    static let present: [[Int: [UInt8]]] = [[0: F.page(0), 1: F.page(1), 2: F.page(2), 40: F.page(40)], [15: F.page(15)]]

    func file(complete: Bool = true, state: [Fixtures.Frame]? = nil, edit: (inout MappedRAMHeader) -> Void = { _ in }) throws -> [UInt8] {
        try F.mappedRAM(blocks: Self.blocks, present: Self.present, complete: complete, state: state, edit: edit)
    }

    @Test("header, blocks with present and zero pages, every present page checked, the device state, the size")
    func describes() throws {
        let bytes = try file()
        let report = F.analyze(bytes)
        #expect(report.kind == .mappedRAM && report.status == .ok && report.error == nil, "\(report.error ?? "")")
        let file = try #require(report.mappedRAM)
        let layout = try MappedRAMLayout(blocks: Self.blocks)
        #expect(file.version == 1 && file.complete && file.generation == 4 && file.pageSize == 4096)
        #expect(file.stateOffset == layout.stateOffset && file.layoutBytes == UInt64(bytes.count) && file.bounded)
        #expect(file.ramBytes == 80 * 4096 && file.pagesChecked)
        #expect(file.blocks.map(\.name) == ["pc.ram", "vga.ram"] && file.blocks.map(\.pages) == [64, 16])
        #expect(file.blocks.map(\.present) == [4, 1] && file.blocks.map(\.zero) == [60, 15])
        #expect(file.blocks.map(\.checkedPages) == [4, 1] && file.blocks.allSatisfy { $0.metadataOK == true && $0.corruptPageCount == 0 })
        #expect(file.blocks.map(\.pagesOffset) == layout.entries.map(\.pagesOffset))
        let state = try #require(file.deviceState)
        #expect(state.channelPlan == .init(multifd: 2, compression: "none", mappedRAM: true))
        #expect(state.sections.map(\.name) == ["global", "serial"] && state.sections.allSatisfy { $0.offset > layout.stateOffset })
        #expect(state.bytes == file.stateLength && state.end?.frames == 4)
        // Longer than its layout: still readable, but no longer bounded.
        #expect(F.analyze(bytes + [0]).mappedRAM?.bounded == false)
    }

    @Test("a flipped byte in a present page: that page listed with its block and file offset (exit 2)")
    func corruptPage() throws {
        var bytes = try file()
        let layout = try MappedRAMLayout(blocks: Self.blocks)
        let at = Int(layout.pageOffset(block: 0, page: 40)) + 1234
        bytes[at] ^= 0x10
        let report = F.analyze(bytes)
        #expect(report.status == .corrupt && report.status.exitStatus == 2)
        #expect(report.mappedRAM?.corruptPages == [.init(block: "pc.ram", page: 40, fileOffset: layout.pageOffset(block: 0, page: 40))])
        #expect(report.mappedRAM?.blocks.map(\.corruptPageCount) == [1, 0])
        // --quick does not read pages.
        let quick = F.analyze(bytes, checkPages: false)
        #expect(quick.status == .ok && quick.mappedRAM?.pagesChecked == false && quick.mappedRAM?.blocks[0].checkedPages == 0)
    }

    @Test("metadata that does not match its checksum: the block is listed, its pages not checked")
    func corruptMetadata() throws {
        var bytes = try file()
        let layout = try MappedRAMLayout(blocks: Self.blocks)
        bytes[Int(layout.entries[1].bitmapOffset)] ^= 1
        let report = F.analyze(bytes)
        #expect(report.status == .corrupt && report.mappedRAM?.corruptMetadata == ["vga.ram"])
        #expect(report.mappedRAM?.blocks[1].metadataOK == false && report.mappedRAM?.blocks[1].present == nil)
        #expect(report.mappedRAM?.blocks[0].checkedPages == 4)
    }

    @Test("structural errors: incomplete, truncated, cut inside the header, regions past the file, a state that disagrees")
    func structural() throws {
        let bytes = try file()
        let cases: [([UInt8], String)] = [
            (try file(complete: false), "the mapped-ram file's save did not complete"),
            (Array(bytes.dropLast(1)), "device state"),
            (Array(bytes.prefix(30)), "the file is 30 bytes, shorter than a mapped-ram header (48 bytes)"),
            (Array(bytes.prefix(100)), "the file is 100 bytes, shorter than its 280-byte mapped-ram header"),
            (try file { $0.entries[0].bitmapOffset = 8 }, "block 'pc.ram' bitmap at offset 8 overlaps the header"),
            (try file(state: [(.configuration, MigrationConfiguration(blocks: [F.block], vcpuCount: 1).encode(), []),
                              (.channels, ChannelPlan(multifd: 1, mappedRAM: true).encode(), [])]),
             "the device state's configuration does not match the header"),
            (try file(state: [(.configuration, MigrationConfiguration(blocks: Self.blocks, vcpuCount: 1).encode(), []),
                              (.channels, ChannelPlan(multifd: 0).encode(), [])]),
             "a mapped-ram file's device state without the mapped-ram flag"),
            (try file(state: [(.configuration, MigrationConfiguration(blocks: Self.blocks, vcpuCount: 1).encode(), []),
                              (.channels, ChannelPlan(multifd: 1, mappedRAM: true).encode(), []), F.pages(data: [(0, F.page(0))])]),
             "a pages frame in a mapped-ram file's device state"),
        ]
        for (input, message) in cases {
            let report = F.analyze(input)
            #expect(report.kind == .mappedRAM && report.status == .error, "\(message)")
            #expect(report.error?.contains(message) == true, "\(message): \(report.error ?? "ok")")
        }
    }

    @Test("a present page past the end of the file (a page area placed after the state) is refused, not read as zero")
    func pagePastTheEnd() throws {
        let bytes = try file { header in
            header.entries[1].pagesOffset = (header.stateOffset + header.stateLength + 8191) / 4096 * 4096
        }
        let report = F.analyze(bytes)
        #expect(report.status == .error)
        #expect(report.error?.contains("ends inside block 'vga.ram' page 15 (its page area)") == true, "\(report.error ?? "ok")")
    }

    @Test("a block whose metadata would not fit in memory is refused before it is read")
    func hugeBlock() throws {
        let huge = MigrationConfiguration.Block(name: "pc.ram", byteCount: 1 << 40, pageSize: 4096)
        let layout = try MappedRAMLayout(blocks: [huge])
        let header = MappedRAMHeader(layout: layout, generation: 1, complete: true, stateLength: 8)
        // A sparse terabyte: the header, then nothing.
        let input = AnalysisInput(bytes: header.encode(), length: layout.stateOffset + 8)
        let report = MigrationFileAnalyzer.analyze(input)
        #expect(report.error?.contains("block 'pc.ram' has 2181038080 bytes of metadata, more than ferry analyze reads (536870912)") == true,
                "\(report.error ?? "ok")")
    }
}
