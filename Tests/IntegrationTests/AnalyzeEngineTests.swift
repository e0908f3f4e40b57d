@testable import Analysis
import Foundation
import Testing
@testable import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// `ferry analyze` on files the real engine wrote, without KVM: a 16 MiB block
/// (two thirds data, one third zero) saved to a stream file and to a mapped-ram
/// file, analyzed as written, then with a byte of a page or a frame flipped.
@Suite(.serialized) struct AnalyzeEngineTests {
    typealias Kit = SwitchoverRetryTests
    static let pages = MultifdEngineTests.blockBytes / 4096
    /// Pages of data in `MultifdEngineTests.block(filled: true)`: all but every third.
    static let dataPages = pages * 2 / 3 + 1

    static func path(_ name: String) -> String { "/tmp/ferry-analyze-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).\(name)" }

    /// Saves a filled block with the engine: to a stream file, or (`mappedRAM`, with `writers` threads) a mapped-ram file.
    static func save(to path: String, mappedRAM: MappedRAMSettings? = nil) throws -> RAMBlock {
        let source = try MultifdEngineTests.block(filled: true)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let opener: any ChannelOpener = mappedRAM == nil
            ? try URIChannelOpener(.file(path: path, offset: 0))
            : MappedRAMFileOpener(path: path, offset: 0, direct: false)
        var parameters = MigrationParameters()
        parameters.maxBandwidth = 1 << 40
        let vm = Kit.RecordingVM()
        let engine = PrecopySource(
            .init(opener: opener, configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: Kit.OneShotDirtyLog(pages: pages)),
                  devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], vm: vm, mappedRAM: mappedRAM),
            parameters: parameters, capabilities: MigrationCapabilities(), onStatus: { _ in })
        engine.run()
        #expect(engine.info.status == .completed, "\(engine.info.errorDescription ?? "")")
        return source
    }

    static func analyze(_ path: String, checkPages: Bool = true) throws -> FileAnalysis {
        let file = try MigrationFile.open(path: path, writing: false, direct: false, base: 0)
        defer { file.close() }
        return MigrationFileAnalyzer.analyze(try AnalysisInput(file: file, allocatedBytes: try file.allocatedBytes()), checkPages: checkPages)
    }

    /// `path` with the byte at `offset` flipped.
    static func flip(_ path: String, at offset: Int) throws {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[offset] ^= 0x04
        try bytes.write(to: URL(fileURLWithPath: path))
    }

    /// The bytes of page `page` of a filled block, as the file holds them.
    static func content(of block: RAMBlock, page: Int) -> [UInt8] {
        block.mapping.withBytes(at: page * 4096, count: 4096) { Array($0) }
    }

    @Test("a stream file: every frame counted, pages per block as sent, the section, the end; a flipped page byte is that page, corrupt")
    func streamFile() throws {
        let path = Self.path("state")
        defer { unlink(path) }
        let source = try Self.save(to: path)
        let report = try Self.analyze(path)
        #expect(report.kind == .stream && report.status == .ok, "\(report.error ?? "")")
        let stream = try #require(report.stream)
        #expect(stream.pages == [.init(block: "pc.ram", normal: UInt64(Self.dataPages), zero: UInt64(Self.pages - Self.dataPages))])
        #expect(stream.frames["configuration"] == 1 && stream.frames["residency"] == 1 && stream.frames["channels"] == 1)
        #expect((stream.frames["pages"] ?? 0) >= (Self.pages + 255) / 256 && stream.frames["section"] == 1 && stream.frames["end"] == 1)
        #expect(stream.sections == [.init(name: "stop-sized", version: 1, bytes: 200, offset: stream.sections.first?.offset ?? 0)])
        #expect(stream.end?.frames == stream.frameCount - 1 && stream.bytes == report.fileBytes)
        #expect(stream.configuration?.blocks == [.init(name: "pc.ram", bytes: UInt64(MultifdEngineTests.blockBytes), pageSize: 4096)])

        // Page 1 (a pattern page) is in the file as it was in RAM: flip one of its bytes.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let at = try #require([UInt8](bytes).firstRange(of: Self.content(of: source, page: 1))).lowerBound
        try Self.flip(path, at: at + 77)
        let corrupt = try Self.analyze(path)
        #expect(corrupt.status == .corrupt && corrupt.status.exitStatus == 2, "\(corrupt.error ?? "")")
        #expect(corrupt.stream?.corruptPages == [.init(block: "pc.ram", offset: 4096)])
        #expect(corrupt.stream?.corruptFrames == [] && corrupt.stream?.end != nil)

        // The section's state: a frame whose payload does not match, listed; the end still checks.
        try Self.flip(path, at: at + 77)
        let section = try #require([UInt8](bytes).firstRange(of: Array("stop-sized".utf8))).lowerBound
        try Self.flip(path, at: section + 20)
        let frame = try Self.analyze(path)
        #expect(frame.status == .corrupt && frame.stream?.corruptFrames.map(\.kind) == ["section"] && frame.stream?.corruptPageCount == 0)
        #expect(frame.stream?.end != nil)

        // Cut short: a structural error.
        #expect(truncate(path, off_t(bytes.count - 10)) == 0)
        let cut = try Self.analyze(path)
        #expect(cut.status == .error && cut.error?.hasPrefix("stream truncated: the stream ended after") == true, "\(cut.error ?? "")")
    }

    @Test("a mapped-ram file written by one or two channel threads: present and zero pages, every page checked, sparse; a flipped page byte is that page",
          arguments: [1, 2])
    func mappedRAMFile(writers: Int) throws {
        let path = Self.path("mapped")
        defer { unlink(path) }
        let source = try Self.save(to: path, mappedRAM: MappedRAMSettings(writers: writers))
        let report = try Self.analyze(path)
        #expect(report.kind == .mappedRAM && report.status == .ok, "\(report.error ?? "")")
        let file = try #require(report.mappedRAM)
        #expect(file.complete && file.generation == 1 && file.pageSize == 4096 && file.pagesChecked)
        #expect(file.ramBytes == UInt64(MultifdEngineTests.blockBytes) && file.bounded && report.fileBytes == file.layoutBytes)
        let block = try #require(file.blocks.first)
        #expect(block.present == Self.dataPages && block.zero == Self.pages - Self.dataPages && block.metadataOK == true)
        #expect(block.checkedPages == Self.dataPages && block.corruptPageCount == 0)
        #expect(try #require(report.allocatedBytes) < report.fileBytes, "zero pages are holes")
        let state = try #require(file.deviceState)
        #expect(state.sections.map(\.name) == ["stop-sized"] && state.channelPlan?.mappedRAM == true && state.channelPlan?.multifd == UInt16(writers))
        #expect(state.frames["pages"] == nil && state.bytes == file.stateLength)

        // Page 4 of the block (a pattern, present): flip a byte where the file holds it.
        let offset = block.pagesOffset + 4 * 4096
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: path))[Int(offset)..<Int(offset) + 4096]
        #expect([UInt8](onDisk) == Self.content(of: source, page: 4))
        try Self.flip(path, at: Int(offset) + 4095)
        let corrupt = try Self.analyze(path)
        #expect(corrupt.status == .corrupt && corrupt.status.exitStatus == 2)
        #expect(corrupt.mappedRAM?.corruptPages == [.init(block: "pc.ram", page: 4, fileOffset: offset)])
        #expect(try Self.analyze(path, checkPages: false).status == .ok, "--quick reads no page")
    }
}
