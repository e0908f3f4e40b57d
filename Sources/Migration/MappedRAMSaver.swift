import GuestMemory
import MigrationProtocol
import Synchronization

/// The source's side of a mapped-ram file: the layout, which pages the file
/// holds (and their checksums), and the header's life.
///
/// The initializer marks the file incomplete (durably) before the first page is written;
/// workers (`FilePageWorker`, one per channel thread) write pages at their
/// offsets and record them here; `finish` writes the bitmaps, checksum tables
/// and a complete header.  A file whose save did not finish stays marked
/// incomplete, and a restore refuses it.
final class MappedRAMSaver: Sendable {
    let file: any PageFile
    let layout: MappedRAMLayout
    let mappings: [HostMapping]
    /// Per block: pages the file holds and their checksums.
    let index: Mutex<[MappedRAMSavedBlock]>
    /// The generation this save writes.
    let generation: UInt64
    /// Whether this save continues the file's last one (an incremental save).
    let continued: Bool
    /// Workers at a dirty sync wait here for each other, so no page of an older
    /// pass is written after a newer copy of it.
    let barrier: SyncBarrier
    /// Whether the page areas were allocated up front (`allocatePageAreas`).
    let allocated: Bool
    /// The shortest run of pages the file does not hold that `finish` turns back
    /// into a hole after an allocation up front (1 MiB).  Each punch costs tens of µs,
    /// so a guest's scattered zero pages stay allocated but unwritten: they read as
    /// zero, and their bits are clear.
    static let shortestHole = 256

    /// Where the file stood when a save began.
    enum Start: Sendable {
        /// Empty (or not ours): every page is written, the file's old bytes are discarded.
        case fresh(generation: UInt64)
        /// A complete file of the same layout that an incremental save continues:
        /// its pages stay, only pages dirtied since are written.
        case continuing(MappedRAMHeader, [MappedRAMSavedBlock])
    }

    /// Reads the file's header, if it is a complete one that fits `layout`: what an
    /// incremental save may continue.  Every region and the page size must be the
    /// layout's: the saver indexes the file's bitmap and checksum table by this
    /// machine's pages.
    static func existing(in file: any PageFile, layout: MappedRAMLayout) -> MappedRAMHeader? {
        guard let length = try? file.length(), length >= UInt64(MappedRAMFormat.fixedHeaderBytes),
              let prefix = try? file.read(MappedRAMFormat.fixedHeaderBytes, at: 0),
              let total = try? MappedRAMHeader.totalByteCount(prefix: prefix),
              let bytes = try? file.read(total, at: 0),
              let header = try? MappedRAMHeader(decoding: bytes, fileLength: length),
              header.isComplete, header.entries.map(\.name) == layout.entries.map(\.name),
              header.stateOffset == layout.stateOffset, header.pageSize == layout.pageSize,
              zip(header.entries, layout.entries).allSatisfy({ $0.pageSize == $1.pageSize
                  && $0.bitmapOffset == $1.bitmapOffset && $0.pagesOffset == $1.pagesOffset
                  && $0.checksumsOffset == $1.checksumsOffset && $0.byteCount == $1.byteCount })
        else { return nil }
        return header
    }

    /// The blocks as the file `header` heads holds them (bitmaps and checksum tables, checked).
    static func blocks(of header: MappedRAMHeader, in file: any PageFile) throws(MigrationError) -> [MappedRAMSavedBlock] {
        try header.entries.map { entry throws(MigrationError) in
            let bitmap: [UInt8]
            do throws(ChannelError) { bitmap = try file.read(Int(entry.bitmapBytes), at: entry.bitmapOffset) } catch { throw .channel(error) }
            return try MappedRAMSavedBlock(entry: entry, bitmap: bitmap, in: file)
        }
    }

    /// Marks the file incomplete (a fresh start also empties it: its page areas
    /// become one hole, allocated with direct-io where that pays) and returns the saver.
    init(file: any PageFile, layout: MappedRAMLayout, mappings: [HostMapping], start: Start, workers: Int) throws(MigrationError) {
        self.file = file
        self.layout = layout
        self.mappings = mappings
        barrier = SyncBarrier(parties: workers)
        switch start {
        case .fresh(let generation):
            self.generation = generation
            continued = false
            index = Mutex(try layout.entries.map { entry throws(MigrationError) in try MappedRAMSavedBlock(pageCount: entry.pageCount) })
            do {
                try file.truncate(to: 0)
                try file.truncate(to: layout.stateOffset)
            } catch { throw .channel(error) }
        case .continuing(let header, let blocks):
            generation = header.generation + 1
            continued = true
            index = Mutex(blocks)
        }
        // An incremental save mostly rewrites pages the file holds: no allocation.
        allocated = continued || !file.isDirect ? false : Self.allocatePageAreas(of: file, layout: layout)
        // Incomplete until `finish`: a crash mid-save leaves a file a restore refuses.
        let header = MappedRAMHeader(layout: layout, generation: generation, complete: false, stateLength: 0)
        do {
            try file.write(header.encode(), at: 0)
            try file.synchronize()
        } catch { throw .channel(error) }
    }

    /// Allocates every block's page area of a file just emptied (blocks that
    /// read as zero), so that direct-io writes land in allocated blocks.  Into a
    /// hole, ext4 allocates under the file's exclusive lock and holds it until
    /// the write completes, so parallel writers run one at a time; into
    /// allocated blocks they run side by side.  Allocating per write does not
    /// help: an allocation waits for every direct write in flight.  Returns
    /// false where it does not pay or fails (what a failure allocated is
    /// punched out again, and pages go into holes, as without it).
    static func allocatePageAreas(of file: any PageFile, layout: MappedRAMLayout) -> Bool {
        guard file.allocationHelps(bytes: layout.entries.reduce(0) { $0 + $1.byteCount }) else { return false }
        do {
            for entry in layout.entries { try file.allocate(at: entry.pagesOffset, count: entry.byteCount) }
            return true
        } catch {
            for entry in layout.entries { try? file.punchHole(at: entry.pagesOffset, count: entry.byteCount) }
            return false
        }
    }

    /// Those of `pages` the file holds now (a zero page there needs a hole), under one
    /// hold of the lock: writer threads that took it once per page (a job's 1024 zero pages)
    /// queued on it for seconds.
    func held(among pages: [(block: Int, page: Int)]) -> [(block: Int, page: Int)] {
        guard !pages.isEmpty else { return [] }
        return index.withLock { index in pages.filter { index[$0.block][$0.page] } }
    }

    /// Records pages just written (with their checksums) and pages now zero.
    func record(block: Int, data: [(page: Int, checksum: UInt64)], zero: [Int]) {
        index.withLock { indexes in
            for (page, checksum) in data { indexes[block].hold(page, checksum: checksum) }
            for page in zero { indexes[block].drop(page) }
        }
    }

    /// Writes a background snapshot's copy of `bytes` (whole pages) taken at
    /// `offset` of `block`: its data pages at their places, through the buffered
    /// descriptor (a copy is not aligned for O_DIRECT), zero pages not written.
    /// Returns (data pages, zero pages).
    func writeCopy(block: Int, offset: Int, bytes: [UInt8]) throws(MigrationError) -> (Int, Int) {
        let pageSize = RAMMigration.pageSize
        var data: [(page: Int, checksum: UInt64)] = []
        var zero: [Int] = []
        var run: (start: Int, end: Int)?
        func flush() throws(MigrationError) {
            guard let (start, end) = run else { return }
            let page = (offset + start) / pageSize
            do { try file.write(Array(bytes[start..<end]), at: layout.pageOffset(block: block, page: page)) } catch { throw .channel(error) }
            run = nil
        }
        for start in stride(from: 0, to: bytes.count, by: pageSize) {
            let scan = PageScan.of(bytes.span.extracting(start..<start + pageSize))
            let page = (offset + start) / pageSize
            if scan.isZero {
                try flush()
                zero.append(page)
            } else {
                data.append((page, scan.checksum))
                run = (run?.start ?? start, start + pageSize)
            }
        }
        try flush()
        record(block: block, data: data, zero: zero)
        return (data.count, zero.count)
    }

    /// Pages the file holds, over all blocks.
    var presentPages: Int { index.withLock { $0.reduce(0) { $0 + $1.presentCount } } }

    /// The device state is written (`stateLength` bytes at the layout's state
    /// offset): writes the metadata, trims the file after the state, and writes
    /// a complete header.
    func finish(stateLength: UInt64) throws(MigrationError) {
        let indexes = index.withLock { $0 }
        var header = MappedRAMHeader(layout: layout, generation: generation, complete: false, stateLength: stateLength)
        do {
            for (number, block) in indexes.enumerated() {
                header.entries[number].metadataChecksum = try block.write(to: file, entry: header.entries[number])
            }
            try file.truncate(to: layout.stateOffset + stateLength)
            // No fdatasync here, as in QEMU: it would add the page cache's writeback
            // (seconds for a buffered save) to the guest's pause.  A crash before the
            // kernel writes it all back leaves pages or metadata that do not match
            // their checksums, and the restore refuses the file; it is never loaded wrong.
            header.flags = MappedRAMFormat.completeFlag
            try file.write(header.encode(), at: 0)
        } catch { throw .channel(error) }
        if allocated {
            // Long runs of zero pages become holes again: no page write is in flight now, and
            // the file is complete either way (an allocated page it does not hold reads as zero),
            // so a punch that fails only leaves blocks allocated.
            for (number, block) in indexes.enumerated() {
                for run in block.absentRuns(atLeast: Self.shortestHole) {
                    try? file.punchHole(at: layout.pageOffset(block: number, page: run.lowerBound),
                                        count: UInt64(run.count) * UInt64(layout.pageSize))
                }
            }
        }
    }
}

/// One channel thread's writer of pages into a mapped-ram file: scans each
/// page (checksum and zero test in one pass), writes runs of adjacent data
/// pages with one `pwritev` each straight from guest RAM (on the O_DIRECT
/// descriptor with `direct-io`), punches holes where a page the file held is
/// now zero, and records both in the saver.
final class FilePageWorker: ChannelWorker {
    let saver: MappedRAMSaver
    let detection: ZeroPageDetection
    let statistics: RAMCounters
    let limiter: RateLimiter
    var list = GatherList()
    var pages = (normal: UInt64(0), zero: UInt64(0))
    var written = (bytes: UInt64(0), frames: UInt64(0))

    init(saver: MappedRAMSaver, detection: ZeroPageDetection, statistics: RAMCounters, limiter: RateLimiter) {
        (self.saver, self.detection, self.statistics, self.limiter) = (saver, detection, statistics, limiter)
    }

    static let pageSize = RAMMigration.pageSize

    func send(_ job: PageJob) throws(MigrationError) {
        guard job.count > 0 else { return }
        let findZero = detection != .none
        var data: [(block: Int, page: Int, checksum: UInt64)] = []
        var zero: [(block: Int, page: Int)] = []
        data.reserveCapacity(job.count)
        for i in 0..<job.count {
            let (block, offset) = (job.blocks[i], job.offsets[i])
            let page = offset / Self.pageSize
            if !job.knownZero[i] {
                let scan = saver.mappings[block].withSpan(at: offset, count: Self.pageSize) { PageScan.of($0) }
                if !(findZero && scan.isZero) {
                    data.append((block, page, scan.checksum))
                    continue
                }
            }
            zero.append((block, page))
        }
        try writeRuns(data)
        // A zero page the file never held reads as zero already (a hole, or a block allocated
        // and never written); one it held becomes a hole.
        let holes = saver.held(among: zero)
        do {
            for hole in holes {
                try saver.file.punchHole(at: saver.layout.pageOffset(block: hole.block, page: hole.page), count: UInt64(Self.pageSize))
            }
        } catch { throw .channel(error) }
        for block in Set(data.map(\.block) + zero.map(\.block)) {
            saver.record(block: block, data: data.filter { $0.block == block }.map { ($0.page, $0.checksum) },
                         zero: zero.filter { $0.block == block }.map(\.page))
        }
        job.onWritten?()
        let bytes = data.count * Self.pageSize
        limiter.charge(bytes)
        pages.normal += UInt64(data.count)
        pages.zero += UInt64(zero.count)
        written.bytes += UInt64(bytes)
        statistics.withLock { s in
            s.normalPages += UInt64(data.count)
            s.zeroPages += UInt64(zero.count)
        }
    }

    /// One `pwritev` per run of pages adjacent in the file.
    func writeRuns(_ data: [(block: Int, page: Int, checksum: UInt64)]) throws(MigrationError) {
        var start = 0
        while start < data.count {
            var end = start + 1
            while end < data.count, data[end].block == data[start].block, data[end].page == data[end - 1].page + 1 { end += 1 }
            list.removeAll()
            for item in data[start..<end] {
                list.append(saver.mappings[item.block], offset: item.page * Self.pageSize, count: Self.pageSize)
            }
            do { try saver.file.write(list, at: saver.layout.pageOffset(block: data[start].block, page: data[start].page)) } catch {
                throw .channel(error)
            }
            written.frames += 1
            start = end
        }
    }

    func sync(epoch: UInt64) throws(MigrationError) { try saver.barrier.arrive(epoch: epoch) }

    func end() throws(MigrationError) {}
}
