import Migration
import MigrationProtocol

/// Checks a mapped-ram file as a restore would (its header, bitmaps and
/// checksum tables, then the pages, then the device state), with the same
/// decoders, and describes it:
/// the header, each block's regions, present and zero pages, the metadata's
/// checksum, every present page against its checksum, and the device state.
/// Reads one block's metadata and about 1 MiB of pages at a time.
struct MappedRAMAnalyzer {
    let input: AnalysisInput
    let checkPages: Bool
    private(set) var report = MappedRAMAnalysis()

    /// The most metadata (bitmap and checksum table) read for one block: a
    /// block of about 227 GiB of 4 KiB pages.  A header claiming more is refused,
    /// so a small sparse file cannot make the analysis allocate without bound.
    static let maximumMetadataBytes: UInt64 = 512 << 20
    /// Pages are read about this many bytes at a time.
    static let segmentBytes = 1 << 20

    init(input: AnalysisInput, checkPages: Bool) { (self.input, self.checkPages) = (input, checkPages) }

    mutating func run() throws(AnalysisStop) {
        let header = try readHeader()
        describe(header)
        guard header.isComplete else {
            throw AnalysisStop("the mapped-ram file's save did not complete (the header is not marked complete): a restore refuses it")
        }
        for entry in header.entries where entry.bitmapBytes + entry.checksumBytes > Self.maximumMetadataBytes {
            throw AnalysisStop("block '\(entry.name)' has \(entry.bitmapBytes + entry.checksumBytes) bytes of metadata, more than ferry analyze reads (\(Self.maximumMetadataBytes))")
        }
        try deviceState(header)
        for (number, entry) in header.entries.enumerated() { try block(number, entry) }
        report.pagesChecked = checkPages
    }

    private func readHeader() throws(AnalysisStop) -> MappedRAMHeader {
        let fixed = MappedRAMFormat.fixedHeaderBytes
        guard input.length >= UInt64(fixed) else {
            throw AnalysisStop("the file is \(input.length) bytes, shorter than a mapped-ram header (\(fixed) bytes)")
        }
        let prefix = try read(fixed, at: 0, "the mapped-ram header")
        let total: Int
        do { total = try MappedRAMHeader.totalByteCount(prefix: prefix) } catch { throw AnalysisStop(error.description) }
        guard input.length >= UInt64(total) else {
            throw AnalysisStop("the file is \(input.length) bytes, shorter than its \(total)-byte mapped-ram header")
        }
        let bytes = try read(total, at: 0, "the mapped-ram header")
        do { return try MappedRAMHeader(decoding: bytes, fileLength: input.length) } catch { throw AnalysisStop(error.description) }
    }

    private mutating func describe(_ header: MappedRAMHeader) {
        report.version = MappedRAMFormat.version
        report.complete = header.isComplete
        report.generation = header.generation
        report.pageSize = header.pageSize
        report.headerBytes = UInt64(MappedRAMHeader.byteCount(blocks: header.entries.count))
        report.stateOffset = header.stateOffset
        report.stateLength = header.stateLength
        report.blocks = header.entries.map {
            .init(name: $0.name, bytes: $0.byteCount, pageSize: $0.pageSize, bitmapOffset: $0.bitmapOffset,
                  checksumsOffset: $0.checksumsOffset, pagesOffset: $0.pagesOffset, pages: $0.pageCount)
        }
        report.ramBytes = header.entries.reduce(0) { $0 &+ $1.byteCount }
        let (end, overflow) = header.stateOffset.addingReportingOverflow(header.stateLength)
        report.layoutBytes = overflow ? .max : end
        report.bounded = input.length <= report.layoutBytes
    }

    /// The device state: an ordinary stream whose configuration must describe the header's blocks.
    private mutating func deviceState(_ header: MappedRAMHeader) throws(AnalysisStop) {
        let channel = FileRegionChannel(input, start: header.stateOffset, end: report.layoutBytes)
        var stream = StreamAnalyzer(mappedRAM: true, base: header.stateOffset)
        defer { report.deviceState = stream.report }
        try stream.run(channel)
        let blocks = stream.report.configuration?.blocks.map { MigrationConfiguration.Block(name: $0.name, byteCount: $0.bytes, pageSize: $0.pageSize) }
        do { try header.check(against: blocks ?? []) } catch {
            throw AnalysisStop("the device state's configuration does not match the header: \(error)")
        }
    }

    /// One block: its metadata checked and decoded, then (unless `--quick`) every present page.
    private mutating func block(_ number: Int, _ entry: MappedRAMBlockEntry) throws(AnalysisStop) {
        let bitmap = try read(Int(entry.bitmapBytes), at: entry.bitmapOffset, "block '\(entry.name)' bitmap")
        let sums = try read(Int(entry.checksumBytes), at: entry.checksumsOffset, "block '\(entry.name)' checksum table")
        let intact = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums) == entry.metadataChecksum
        report.blocks[number].metadataOK = intact
        guard intact else {
            report.corruptMetadata.append(entry.name)
            return
        }
        let index: MappedRAMBlockIndex
        do { index = try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry) } catch { throw AnalysisStop(error.description) }
        report.blocks[number].present = index.presentCount
        report.blocks[number].zero = index.pageCount - index.presentCount
        if checkPages { try pages(number, entry, index) }
    }

    /// Reads every present page of a block, a run of adjacent ones at a time, and compares each with its checksum.
    private mutating func pages(_ number: Int, _ entry: MappedRAMBlockEntry, _ index: MappedRAMBlockIndex) throws(AnalysisStop) {
        let pageSize = Int(entry.pageSize)
        let runPages = max(1, Self.segmentBytes / pageSize)
        var page = 0
        while page < index.pageCount {
            if page & 63 == 0 && index.present[page >> 6] == 0 { page += 64; continue }
            guard index[page] else { page += 1; continue }
            var runEnd = page + 1
            while runEnd < index.pageCount, runEnd - page < runPages, index[runEnd] { runEnd += 1 }
            let offset = entry.pagesOffset + UInt64(page) * UInt64(pageSize)
            let bytes = try read((runEnd - page) * pageSize, at: offset, "block '\(entry.name)' page \(page) (its page area)")
            for check in page..<runEnd {
                let start = (check - page) * pageSize
                guard FrameChecksum.of(bytes[start..<start + pageSize]) != index.checksums[check] else { continue }
                report.corruptPageCount += 1
                report.blocks[number].corruptPageCount += 1
                if report.corruptPages.count < ReportLimits.listed {
                    report.corruptPages.append(.init(block: entry.name, page: check, fileOffset: offset + UInt64(start)))
                }
            }
            report.blocks[number].checkedPages += runEnd - page
            page = runEnd
        }
    }

    private func read(_ count: Int, at offset: UInt64, _ what: String) throws(AnalysisStop) -> [UInt8] {
        do { return try input.read(count, at: offset) } catch {
            if error == .endOfStream { throw AnalysisStop("the file (\(input.length) bytes) ends inside \(what) (\(count) bytes at offset \(offset))") }
            throw AnalysisStop(error.description)
        }
    }
}
