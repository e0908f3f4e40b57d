import FuzzSupport
import Migration
import MigrationProtocol

/// The `stream` seed corpus, built with the encoders the source itself uses
/// (`StreamWriter`, `MigrationConfiguration`, `RAMResidency`,
/// `PageBatchWriter`, `StateSection`), so that after a stream format change
/// `FuzzStream --make-seeds fuzz/corpus/stream` regenerates valid seeds.
enum StreamSeeds {
    static func write(to directory: String) { SeedFiles.write(all(), to: directory) }

    /// Each seed by file name.
    static func all() -> [(String, [UInt8])] {
        let target = StreamTarget.blockLayout
        let configuration = MigrationConfiguration(
            blocks: target.map { MigrationConfiguration.Block(name: $0.name, byteCount: $0.bytes, pageSize: 4096) },
            vcpuCount: StreamTarget.vcpuCount)
        let allResident = RAMResidency(words: target.map { [(UInt64(1) << UInt64(RAMResidency.chunkCount(byteCount: $0.bytes))) - 1] })
        let full = stream(configuration, residency: allResident, pages: [mixedPages(), zeroPages()])
        return [
            ("full", full),
            ("no-pages", stream(configuration, residency: nil, pages: [])),
            ("no-residency", stream(configuration, residency: nil, pages: [mixedPages()])),
            ("idle-residency", stream(configuration, residency: RAMResidency(words: target.map { _ in [0] }), pages: [zeroPages()])),
            ("wrong-configuration", stream(MigrationConfiguration(blocks: configuration.blocks, vcpuCount: 2), residency: nil, pages: [])),
            ("truncated", Array(full.prefix(full.count * 2 / 3))),
        ]
    }

    /// A complete stream: header, configuration, optional residency, page frames, sections, end.
    static func stream(_ configuration: MigrationConfiguration, residency: RAMResidency?, pages: [[UInt8]]) -> [UInt8] {
        let channel = InputChannel()
        let writer = StreamWriter(channel: channel)
        do {
            try writer.sendStreamHeader()
            try writer.send(.configuration, payload: configuration.encode())
            if let residency { try writer.send(.residency, payload: residency.encode()) }
            for payload in pages { try writer.send(.pages, payload: payload) }
            for case let device as FuzzDevice in StreamTarget.makeDevices() {
                try writer.send(.section, payload: StateSection(name: device.sectionName, version: device.sectionVersion,
                                                                state: try device.save()).encode())
            }
            try writer.sendEnd()
        } catch { fatalError("cannot build a seed: \(error)") }
        return channel.written
    }

    /// Data and zero records in both blocks, with and without the continuation flag.
    static func mixedPages() -> [UInt8] {
        var batch = PageBatchWriter()
        let page = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 31 + 5) }
        batch.append(block: 0, offset: 0, page: page[...])
        batch.append(block: 0, offset: 4096, page: nil)
        batch.append(block: 0, offset: (3 << 20) - 4096, page: nil)
        batch.append(block: 1, offset: 0, page: page[...])
        batch.append(block: 1, offset: 8192, page: nil)
        batch.append(block: 0, offset: 0, page: nil)
        return batch.payload()
    }

    /// Zero records only, one of them on a page an earlier frame loaded.
    static func zeroPages() -> [UInt8] {
        var batch = PageBatchWriter()
        for offset in stride(from: UInt64(0), to: 16 * 4096, by: 4096) { batch.append(block: 0, offset: offset, page: nil) }
        batch.append(block: 1, offset: (64 << 10) - 4096, page: nil)
        return batch.payload()
    }
}
