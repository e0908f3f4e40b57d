@testable import Analysis
import MigrationProtocol
import Testing

/// `ferry analyze` on stream files built in memory: what it counts, which
/// corruption it lists (and goes on), which structural errors stop it.
@Suite struct StreamAnalysisTests {
    typealias F = Fixtures

    @Test("a stream's channel, configuration, frames, pages per block, sections and end")
    func counts() throws {
        let frames = F.frames(pages: [F.pages(data: [(0, F.page(0)), (4096, F.page(1)), (12288, F.page(3))], zero: [8192, 16384]),
                                      F.pages(data: [(4096, F.page(9))], zero: [0])])
        let bytes = F.stream(frames)
        let report = F.analyze(bytes)
        #expect(report.kind == .stream && report.status == .ok && report.error == nil, "\(report.error ?? "")")
        #expect(report.fileBytes == UInt64(bytes.count) && report.status.exitStatus == 0)
        let stream = try #require(report.stream)
        #expect(stream.version == 3 && stream.channel?.role == "main" && stream.channel?.migrationID == String(repeating: "0", count: 32))
        #expect(stream.configuration == .init(vcpus: 2, blocks: [.init(name: "pc.ram", bytes: 64 * 4096, pageSize: 4096)]))
        #expect(stream.residency == [.init(block: "pc.ram", chunks: 1, residentChunks: 1)])
        #expect(stream.channelPlan == .init(multifd: 0, compression: "none", mappedRAM: false))
        #expect(stream.frames == ["configuration": 1, "residency": 1, "channels": 1, "pages": 2, "section": 2, "end": 1])
        #expect(stream.frameCount == 8 && stream.end?.frames == 7)
        #expect(stream.pages == [.init(block: "pc.ram", normal: 4, zero: 3)])
        #expect(stream.sections.map(\.name) == ["global", "cpu/0"] && stream.sections.map(\.bytes) == [1, 100])
        #expect(stream.sections.allSatisfy { $0.version == 1 && Int($0.offset) < bytes.count })
        #expect(stream.bytes == UInt64(bytes.count) && stream.trailingBytes == 0 && stream.corruptionCount == 0)
    }

    @Test("a page whose last copy does not match is corrupt (exit 2); one sent again intact is only counted")
    func corruptPages() throws {
        let frames = F.frames(pages: [F.pages(data: [(0, F.page(0)), (4096, F.page(1)), (8192, F.page(2))], lying: [4096, 8192]),
                                      F.pages(data: [(8192, F.page(5))])])
        let report = F.analyze(F.stream(frames))
        #expect(report.status == .corrupt && report.status.exitStatus == 2 && report.error == nil)
        let stream = try #require(report.stream)
        #expect(stream.corruptPages == [.init(block: "pc.ram", offset: 4096)] && stream.corruptPageCount == 1)
        #expect(stream.resentMismatches == 1 && stream.end != nil)
        // A zero record clears a suspect page too, as on the destination.
        let cleared = F.analyze(F.stream(F.frames(pages: [F.pages(data: [(4096, F.page(1))], lying: [4096]), F.pages(data: [], zero: [4096])])))
        #expect(cleared.status == .ok && cleared.stream?.resentMismatches == 1)
    }

    @Test("a frame whose payload does not match its checksum is listed, and the rest (the end's digest too) still checked")
    func corruptFrame() throws {
        var bytes = F.stream(F.frames(pages: [F.pages(data: [(0, F.page(0))])]))
        let name = Array("cpu/0".utf8)
        let at = try #require(bytes.firstRange(of: name)).lowerBound
        bytes[at + name.count + 10] ^= 0x20            // inside cpu/0's state
        let report = F.analyze(bytes)
        #expect(report.status == .corrupt && report.error == nil)
        let stream = try #require(report.stream)
        #expect(stream.corruptFrames.map(\.kind) == ["section"] && stream.corruptFrames[0].index == 5)
        #expect(stream.corruptFrames[0].reason == "the payload does not match its checksum")
        #expect(stream.sections.map(\.name) == ["global"] && stream.end?.frames == 6 && stream.frames["section"] == 2)

        // A corrupt end: listed; its count and digest could not be read.
        var end = F.stream(F.frames(pages: []))
        end[end.count - 12] ^= 1
        let cut = F.analyze(end)
        #expect(cut.status == .corrupt && cut.stream?.corruptFrames.map(\.kind) == ["end"] && cut.stream?.end == nil)
        // A corrupt configuration: nothing after it can be checked.
        var configuration = F.stream(F.frames(pages: []))
        configuration[StreamHeader.byteCount + FrameHeader.byteCount + 1] ^= 1
        let stopped = F.analyze(configuration)
        #expect(stopped.status == .error && stopped.error == "the configuration frame is corrupt: nothing after it can be checked")
        #expect(stopped.stream?.corruptFrames.count == 1)
    }

    @Test("structural errors stop the analysis with the restore's own message (exit 1)",
          arguments: [
            ("cut short", { @Sendable (b: [UInt8]) -> [UInt8] in Array(b.dropLast(30)) }, "stream truncated: the stream ended after"),
            ("bad magic", { @Sendable (b: [UInt8]) -> [UInt8] in Array("QEVMxxxx".utf8) + b.dropFirst(8) }, "not a Ferry migration file (bad magic 'QEVMxxxx'"),
            ("too short", { @Sendable (b: [UInt8]) -> [UInt8] in Array(b.prefix(5)) }, "the file is 5 bytes: too short to be a Ferry migration file"),
            ("old version", { @Sendable (b: [UInt8]) -> [UInt8] in Array(b.prefix(8)) + [2, 0, 0, 0] + b.dropFirst(12) }, "stream version 2 is not supported"),
          ] as [(String, @Sendable ([UInt8]) -> [UInt8], String)])
    func structural(_ what: String, _ change: @Sendable ([UInt8]) -> [UInt8], _ message: String) {
        let report = F.analyze(change(F.stream(F.frames(pages: [F.pages(data: [(0, F.page(0))])]))))
        #expect(report.status == .error && report.status.exitStatus == 1, "\(what)")
        #expect(report.error?.contains(message) == true, "\(what): \(report.error ?? "no error")")
    }

    @Test("a configuration with an absurd block size is refused, not counted into an overflow (the analyzer trapped)")
    func absurdBlockSize() {
        let huge = MigrationConfiguration(blocks: [.init(name: "pc.ram", byteCount: 0xFFFF_FFFF_FFFF_F000, pageSize: 4096)], vcpuCount: 1)
        let report = F.analyze(F.stream([(.configuration, huge.encode(), []), (.residency, RAMResidency(words: [[1]]).encode(), [])]))
        #expect(report.status == .error && report.status.exitStatus == 1)
        #expect(report.error?.contains("block 'pc.ram' has size 18446744073709547520 and page size 4096") == true, "\(report.error ?? "no error")")
    }

    @Test("200 000 sections are checked for repeats in linear time")
    func manySections() {
        let configuration: Fixtures.Frame = (.configuration, F.configuration.encode(), [])
        let plan: Fixtures.Frame = (.channels, ChannelPlan(multifd: 0).encode(), [])
        let sections = (0..<200_000).map { F.section("s\($0)", bytes: 1) }
        let start = ContinuousClock.now
        let report = F.analyze(F.stream([configuration, plan] + sections))
        // Quadratic, this took minutes (2 * 10^10 name comparisons).
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(report.stream?.sections.count == 200_000, "\(report.error ?? "")")
    }

    @Test("frames in an order or place a restore refuses")
    func order() {
        let configuration: Fixtures.Frame = (.configuration, F.configuration.encode(), [])
        let plan: Fixtures.Frame = (.channels, ChannelPlan(multifd: 0).encode(), [])
        let cases: [([Fixtures.Frame], String)] = [
            ([F.section("global", bytes: 1)], "the stream must open with its configuration, not a frame of kind 3"),
            ([configuration, F.pages(data: [(0, F.page(0))])], "a frame of kind 2 before the channel plan"),
            ([configuration, configuration], "a second configuration"),
            ([configuration, plan, plan], "a second channel plan"),
            ([configuration, (.channels, ChannelPlan(multifd: 4).encode(), [])], "announces 4 multifd channels, which a file does not hold"),
            ([configuration, (.channels, ChannelPlan(multifd: 1, mappedRAM: true).encode(), [])], "its pages are in a mapped-ram file"),
            ([configuration, plan, F.section("global", bytes: 1), F.section("global", bytes: 1)], "section 'global' arrived twice"),
            ([configuration, plan, (.sync, SyncMarker.encode(epoch: 1), [])], "a sync frame on the main channel"),
            ([configuration, plan, F.pages(data: [(64 * 4096, F.page(0))])], "lies outside RAM block 'pc.ram'"),
        ]
        for (frames, message) in cases {
            let report = F.analyze(F.stream(frames))
            #expect(report.status == .error && report.error?.contains(message) == true, "\(message): \(report.error ?? "ok")")
        }
        let multifd = F.analyze(F.stream(F.frames(pages: []), channel: ChannelIdentity(role: .multifd, index: 1)))
        #expect(multifd.error == "the file holds the multifd channel 1's stream, not a main channel's")
    }

    @Test("a frame lost or moved: the sequence numbers say so")
    func sequence() {
        var encoder = FrameEncoder()
        let frames = F.frames(pages: [F.pages(data: [(0, F.page(0))])]).map { encoder.frame($0.kind, payload: $0.payload, tail: $0.tail) }
        let swapped = StreamHeader.encode() + frames[0] + frames[2] + frames[1] + frames[3...].joined() + encoder.end()
        #expect(F.analyze(swapped).error?.contains("frame out of sequence: a frame of kind 6 numbered 2 where frame 1 was due") == true)
    }

    @Test("bytes after the end frame are counted, not read")
    func trailing() {
        let report = F.analyze(F.stream(F.frames(pages: [])) + [1, 2, 3])
        #expect(report.status == .ok && report.stream?.trailingBytes == 3)
    }
}
