import Compression
import FuzzSupport
import Migration
import MigrationProtocol

/// The `stream` seed corpus, built with the encoders the source itself uses
/// (`StreamWriter`, `MigrationConfiguration`, `ChannelPlan`, `RAMResidency`,
/// `PageBatchWriter`/`PageIndexBuilder` with `ZstdCompressor`, `SyncMarker`,
/// `StateSection`), so that after a stream format change
/// `FuzzStream --make-seeds fuzz/corpus/stream` regenerates valid seeds.
/// A multifd seed is the main channel's stream followed by each multifd
/// channel's (the target cuts its input at each stream header).
enum StreamSeeds {
    static func write(to directory: String) { SeedFiles.write(all(), to: directory) }

    static let migrationID: [UInt8] = (0..<UInt8(ChannelIdentity.idByteCount)).map { $0 &* 17 &+ 3 }

    /// One frame's page records: its index and its tail.
    struct Batch {
        var index: [UInt8]
        var tail: [UInt8]
    }

    /// Each seed by file name.
    static func all() -> [(String, [UInt8])] {
        let target = StreamTarget.blockLayout
        let configuration = MigrationConfiguration(
            blocks: target.map { MigrationConfiguration.Block(name: $0.name, byteCount: $0.bytes, pageSize: 4096) },
            vcpuCount: StreamTarget.vcpuCount)
        let allResident = RAMResidency(words: target.map { [(UInt64(1) << UInt64(RAMResidency.chunkCount(byteCount: $0.bytes))) - 1] })
        let full = main(configuration, residency: allResident, pages: [mixedPages(), zeroPages()])
        let multifd = main(configuration, plan: ChannelPlan(multifd: 2), residency: allResident, pages: [])
            + channel(0, [mixedPages()], [zeroPages()])
            + channel(1, [zeroPages()], [mixedPages()])
        return [
            ("full", full),
            ("zstd", main(configuration, residency: nil, pages: [compressedPages(), zeroPages(), compressedPages(offset: 4096)])),
            ("no-pages", main(configuration, residency: nil, pages: [])),
            ("no-residency", main(configuration, residency: nil, pages: [mixedPages()])),
            ("idle-residency", main(configuration, residency: RAMResidency(words: target.map { _ in [0] }), pages: [zeroPages()])),
            ("wrong-configuration", main(MigrationConfiguration(blocks: configuration.blocks, vcpuCount: 2), residency: nil, pages: [])),
            ("truncated", Array(full.prefix(full.count * 2 / 3))),
            ("multifd", multifd),
            ("multifd-zstd", main(configuration, plan: ChannelPlan(multifd: 2, compression: .zstd), residency: nil, pages: [])
                + channel(1, [compressedPages()], [])
                + channel(0, [], [compressedPages(offset: 8192), zeroPages()])),
            ("multifd-one", main(configuration, plan: ChannelPlan(multifd: 1), residency: nil, pages: [])
                + channel(0, [mixedPages(), zeroPages()], [mixedPages()], [])),
            ("multifd-truncated", Array(multifd.prefix(multifd.count - 40))),
        ]
    }

    /// A main channel's stream: header, configuration, `plan`, optional residency, page frames, sections, end.
    static func main(_ configuration: MigrationConfiguration, plan: ChannelPlan = ChannelPlan(multifd: 0),
                     residency: RAMResidency?, pages: [Batch]) -> [UInt8] {
        write(ChannelIdentity(role: .main, migrationID: migrationID)) { writer throws(MigrationError) in
            try writer.send(.configuration, payload: configuration.encode())
            try writer.send(.channels, payload: plan.encode())
            if let residency { try writer.send(.residency, payload: residency.encode()) }
            for batch in pages { try send(batch, on: writer) }
            for case let device as FuzzDevice in StreamTarget.makeDevices() {
                try writer.send(.section, payload: StateSection(name: device.sectionName, version: device.sectionVersion,
                                                                state: try device.save()).encode())
            }
        }
    }

    /// Multifd channel `index`'s stream: header, then each epoch's page frames
    /// with a `sync` between epochs (epoch 1 after the first), end.
    static func channel(_ index: UInt16, _ epochs: [Batch]...) -> [UInt8] {
        write(ChannelIdentity(role: .multifd, index: index, migrationID: migrationID)) { writer throws(MigrationError) in
            for (epoch, batches) in epochs.enumerated() {
                if epoch > 0 { try writer.send(.sync, payload: SyncMarker.encode(epoch: UInt64(epoch))) }
                for batch in batches { try send(batch, on: writer) }
            }
        }
    }

    static func write(_ identity: ChannelIdentity, _ body: (StreamWriter) throws(MigrationError) -> Void) -> [UInt8] {
        let channel = InputChannel()
        let writer = StreamWriter(channel: channel)
        do {
            try writer.sendStreamHeader(identity)
            try body(writer)
            try writer.sendEnd()
        } catch { fatalError("cannot build a seed: \(error)") }
        return channel.written
    }

    /// A `pages` frame as the senders write it: the head, then the tail.
    static func send(_ batch: Batch, on writer: StreamWriter) throws(MigrationError) {
        try writer.write(writer.pagesFrameHead(index: batch.index, tailLength: batch.tail.count) + batch.tail)
    }

    static func page(_ seed: Int) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 31 + seed) } }

    /// Data and zero records in both blocks, a page loaded and then zeroed in the same frame.
    static func mixedPages() -> Batch {
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: 0, page: page(5)[...])
        batch.append(block: 0, offset: 4096, page: nil)
        batch.append(block: 0, offset: (3 << 20) - 4096, page: page(6)[...])
        batch.append(block: 1, offset: 0, page: page(7)[...])
        batch.append(block: 1, offset: 8192, page: nil)
        batch.append(block: 0, offset: 0, page: nil)
        return Batch(index: batch.payload(), tail: batch.tail)
    }

    /// Zero records only, one of them on a page an earlier frame loaded.
    static func zeroPages() -> Batch {
        var batch = PageBatchWriter()
        for offset in stride(from: UInt64(0), to: 16 * 4096, by: 4096) { batch.append(block: 0, offset: offset, page: nil) }
        batch.append(block: 1, offset: (64 << 10) - 4096, page: nil)
        return Batch(index: batch.payload(), tail: batch.tail)
    }

    /// Data pages in both blocks and a zero record, the tail one zstd frame
    /// (`ZstdCompressor`, as the multifd senders use it), its pages compressible.
    static func compressedPages(offset: UInt64 = 0) -> Batch {
        var index = PageIndexBuilder()
        var data: [UInt8] = []
        let pages: [(block: Int, offset: UInt64, bytes: [UInt8]?)] = [
            (0, offset, page(9)), (0, offset + 8192, [UInt8](repeating: 0xa5, count: 4096)), (0, offset + 4096, nil),
            (1, offset, page(11)), (0, (3 << 20) - 4096, page(9)),
        ]
        for (block, offset, bytes) in pages {
            if let bytes {
                index.append(block: block, offset: offset, kind: .data, checksum: FrameChecksum.of(bytes[...]))
                data += bytes
            } else {
                index.append(block: block, offset: offset, kind: .zero)
            }
        }
        do {
            let compressor = try ZstdCompressor()
            try compressor.compress(data.span)
            let tail = compressor.withOutput { frame in
                var bytes: [UInt8] = []
                for i in frame.indices { bytes.append(frame[i]) }
                return bytes
            }
            return Batch(index: index.payload(compressed: true), tail: tail)
        } catch { fatalError("cannot compress a seed's pages: \(error)") }
    }
}
