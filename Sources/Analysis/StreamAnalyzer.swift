import Migration
import MigrationProtocol

/// Decodes one stream with the engine's own `FrameReader` (every header,
/// sequence number, checksum and the end's count and digest checked as a
/// restore checks them), frame by frame, and describes it: the channel, the
/// configuration, the channel plan, every frame kind counted, the pages per
/// block (each page checked against its checksum), the sections and the end.
///
/// A frame whose payload does not match its checksum is listed and skipped,
/// and the decoding goes on; anything else a restore would refuse (a frame out
/// of sequence, a stream cut short, frames in an order the destination refuses)
/// stops it with that error.
struct StreamAnalyzer {
    /// Whether this is a mapped-ram file's device state (its channel plan must say so, and no pages may follow).
    let mappedRAM: Bool
    /// Where the stream starts in the file, to report frame offsets from the file's base.
    let base: UInt64
    private(set) var report = StreamAnalysis()
    /// The sections' names so far (a stream of millions of sections is checked in linear time).
    private var sectionNames: Set<String> = []
    private var tally: PageTally?

    init(mappedRAM: Bool, base: UInt64) { (self.mappedRAM, self.base) = (mappedRAM, base) }

    /// Reads the whole stream from `channel`; the report says how far it got when it throws.
    mutating func run(_ channel: FileRegionChannel) throws(AnalysisStop) {
        var reader = FrameReader(channel: channel, listingCorruptFrames: true)
        defer {
            report.bytes = reader.bytesRead
            if let tally {
                report.pages = tally.pages
                report.corruptPageCount = tally.suspect.count
                report.corruptPages = tally.corruptPages(limit: ReportLimits.listed)
                report.resentMismatches = tally.resentMismatches
            }
        }
        let identity: ChannelIdentity
        do { identity = try reader.readStreamHeader() } catch { throw AnalysisStop(error.description) }
        report.version = StreamHeader.current
        report.channel = .init(role: identity.role.description, index: identity.index,
                               migrationID: identity.migrationID.map { byte in
                                   let digits = String(byte, radix: 16)
                                   return digits.count == 1 ? "0" + digits : digits
                               }.joined())
        guard identity.role == .main else { throw AnalysisStop("the file holds the \(identity)'s stream, not a main channel's") }
        var payload: [UInt8] = []
        var discarded: [UInt8] = []
        while true {
            let start = base + reader.bytesRead
            let header: FrameHeader
            do { header = try reader.next(into: &payload) } catch {
                if case .stream(.checksumMismatch(let kind)) = error, kind == FrameKind.end.rawValue {
                    // Only an end is refused for its checksum here: its count and digest cannot be read.
                    listCorrupt(index: report.frameCount, kind: .end, at: start, "the end frame does not match its checksum")
                    report.frameCount += 1
                    return
                }
                throw AnalysisStop(error.description)
            }
            report.frameCount += 1
            report.frames[Self.name(header.kind), default: 0] += 1
            guard reader.lastFrameIntact else {
                listCorrupt(index: report.frameCount - 1, kind: header.kind, at: start, "the payload does not match its checksum")
                do { try reader.readTail(into: &discarded) } catch { throw AnalysisStop(error.description) }
                if header.kind == .configuration || header.kind == .channels {
                    throw AnalysisStop("the \(Self.name(header.kind)) frame is corrupt: nothing after it can be checked")
                }
                continue
            }
            if try take(header, payload: payload, at: start, from: &reader) {
                report.trailingBytes = channel.end - channel.offset
                return
            }
        }
    }

    /// One intact frame; `true` at the end.
    private mutating func take(_ header: FrameHeader, payload: [UInt8], at start: UInt64,
                               from reader: inout FrameReader) throws(AnalysisStop) -> Bool {
        guard report.configuration != nil || header.kind == .configuration else {
            throw AnalysisStop("unexpected frame: the stream must open with its configuration, not a frame of kind \(header.kind.rawValue)")
        }
        if report.channelPlan == nil && [.pages, .section, .end].contains(header.kind) {
            throw AnalysisStop("unexpected frame: a frame of kind \(header.kind.rawValue) before the channel plan")
        }
        switch header.kind {
        case .configuration:
            guard report.configuration == nil else { throw AnalysisStop("unexpected frame: a second configuration") }
            let configuration: MigrationConfiguration
            do { configuration = try MigrationConfiguration(decoding: payload) } catch { throw AnalysisStop(error.description) }
            report.configuration = .init(vcpus: configuration.vcpuCount, blocks: configuration.blocks.map {
                .init(name: $0.name, bytes: $0.byteCount, pageSize: $0.pageSize)
            })
            tally = PageTally(layout: configuration.blocks)
        case .residency:
            guard report.residency == nil, report.frames["pages", default: 0] == 0 else {
                throw AnalysisStop("unexpected frame: a residency frame after pages or another residency frame")
            }
            try residency(payload)
        case .channels:
            try plan(payload)
        case .pages:
            guard !mappedRAM else { throw AnalysisStop("unexpected frame: a pages frame in a mapped-ram file's device state") }
            if let corruption = try tally?.load(header, payload: payload, from: &reader) {
                listCorrupt(index: report.frameCount - 1, kind: .pages, at: start, corruption)
            }
        case .section:
            let section: StateSection
            do { section = try StateSection(decoding: payload) } catch { throw AnalysisStop(error.description) }
            guard sectionNames.insert(section.name).inserted else {
                throw AnalysisStop("unexpected frame: section '\(section.name)' arrived twice")
            }
            report.sections.append(.init(name: section.name, version: section.version, bytes: section.state.count, offset: start))
        case .end:
            // The reader checked its count and digest against every frame read.
            let end: EndOfStream
            do { end = try EndOfStream(decoding: payload) } catch { throw AnalysisStop(error.description) }
            report.end = .init(frames: end.frames, digest: end.digest.hex)
            return true
        case .sync:
            throw AnalysisStop("unexpected frame: a sync frame on the main channel")
        case .postcopy:
            // Postcopy needs the return path's page requests: a file never holds one.
            throw AnalysisStop("unexpected frame: a postcopy switch in a migration file")
        case .resume:
            throw AnalysisStop("unexpected frame: a resumed postcopy connection's opening in a migration file")
        case .returnMessage:
            throw AnalysisStop("unexpected frame: a return-path message on the forward stream")
        case .invalid:
            throw AnalysisStop(ProtocolError.invalidFrameKind(0).description)
        }
        return false
    }

    private mutating func residency(_ payload: [UInt8]) throws(AnalysisStop) {
        let layout = tally?.layout ?? []
        let residency: RAMResidency
        do { residency = try RAMResidency(decoding: payload, layout: layout) } catch { throw AnalysisStop(error.description) }
        report.residency = zip(layout, residency.words).map { block, words in
            .init(block: block.name, chunks: RAMResidency.chunkCount(byteCount: block.byteCount),
                  residentChunks: words.reduce(0) { $0 + $1.nonzeroBitCount })
        }
    }

    private mutating func plan(_ payload: [UInt8]) throws(AnalysisStop) {
        guard report.channelPlan == nil else { throw AnalysisStop("unexpected frame: a second channel plan") }
        let plan: ChannelPlan
        do { plan = try ChannelPlan(decoding: payload) } catch { throw AnalysisStop(error.description) }
        report.channelPlan = .init(multifd: plan.multifd, compression: plan.compression == .zstd ? "zstd" : "none", mappedRAM: plan.mappedRAM)
        guard plan.mappedRAM == mappedRAM else {
            throw AnalysisStop(plan.mappedRAM
                ? "unexpected frame: the stream says its pages are in a mapped-ram file, but this is a stream file"
                : "unexpected frame: a mapped-ram file's device state without the mapped-ram flag")
        }
        guard plan.multifd == 0 || plan.mappedRAM else {
            throw AnalysisStop("the stream announces \(plan.multifd) multifd channels, which a file does not hold (their pages are not here)")
        }
    }

    private mutating func listCorrupt(index: UInt64, kind: FrameKind, at offset: UInt64, _ reason: String) {
        report.corruptFrameCount += 1
        guard report.corruptFrames.count < ReportLimits.listed else { return }
        report.corruptFrames.append(.init(index: index, kind: Self.name(kind), offset: offset, reason: reason))
    }

    /// The frame kind's name in reports (docs/stream-format.md's table).
    static func name(_ kind: FrameKind) -> String {
        switch kind {
        case .invalid: "invalid"
        case .configuration: "configuration"
        case .pages: "pages"
        case .section: "section"
        case .end: "end"
        case .residency: "residency"
        case .channels: "channels"
        case .sync: "sync"
        case .postcopy: "postcopy"
        case .resume: "resume"
        case .returnMessage: "return-message"
        }
    }
}
