import Foundation
import GuestMemory
import MigrationProtocol
import Synchronization

extension RAMMigration {
    /// Pages one reader takes at a time: read with one `preadv` per run of
    /// present pages (4 MiB: a restore into preallocated RAM took 380 ms against
    /// 422 with 1 MiB, medians of 3), then checked while still in cache.
    static let restoreSegmentPages = 1024

    /// Reads a restore keeps in flight at least, whatever the channel count:
    /// this host's virtual disk read a 1.5 GiB file faster with more requests
    /// queued (6 alternating rounds: 4 readers 622 ms, 16 readers 585, 24 readers
    /// 564; fio read 2.0-2.6 GB/s at depth 32, 1.3-1.7 with 4 jobs; bench/README
    /// "Tenth session").  16, not more: 24 and 32 did no better than 16 within
    /// this disk's noise, and each reader is a thread.
    static let restoreReadsInFlight = 16

    /// Restores every page of the file `header` describes, with `readers`
    /// threads (at least `restoreReadsInFlight`) in parallel, straight into
    /// guest RAM (on the O_DIRECT descriptor with `direct-io`).  Readers start on
    /// the bitmaps while this thread reads and checks the checksum tables, which
    /// a reader waits for only to check the pages it has read (a 1.5 GiB guest's
    /// table is 3 MiB: 10-30 ms before the first page here).  Each page is
    /// checked against its checksum; a mismatch, or a table that does not match
    /// the metadata checksum, refuses the restore.  Pages the file lacks are
    /// zero: left alone when RAM starts zero, zeroed otherwise.
    ///
    /// While the readers run, guest RAM not yet touched is filled 4 KiB at a time
    /// (`adviseBasePages`); huge pages are advised again once they are done, so
    /// the kernel may still merge the restored memory later.  On this platform,
    /// readers faulting in transparent huge pages restored 1280 MiB in 3836, 6363
    /// and 6544 ms, with base pages in 1551, 1528 and 792 ms (alternating runs,
    /// bench/README "Eighth session").
    public func loadMappedRAM(_ header: MappedRAMHeader, from file: any PageFile, readers: Int) throws(MigrationError) {
        let bitmaps = try header.entries.map { entry throws(MigrationError) in try MappedRAMImage.readBitmap(entry, of: file) }
        var present: [[UInt64]] = []
        for (entry, bitmap) in zip(header.entries, bitmaps) {
            do { present.append(try MappedRAMBlockIndex.presentWords(bitmap: bitmap, entry: entry)) } catch { throw .stream(error) }
        }
        for mapping in mappings { mapping.adviseBasePages() }
        defer { for mapping in mappings { mapping.adviseHugePages() } }
        let segments = header.entries.enumerated().flatMap { block, entry in
            stride(from: 0, to: entry.pageCount, by: Self.restoreSegmentPages).map { (block: block, first: $0) }
        }
        let tables = ChecksumTables(blocks: header.entries.count)
        let next = Atomic<Int>(0)
        let failure = Mutex<MigrationError?>(nil)
        let count = max(1, min(max(readers, Self.restoreReadsInFlight), segments.count))
        let threads = (0..<count).map { _ in
            JoinableThread(name: "ferry-restore") { [self, present] in
                var list = ScatterList()
                var normal = 0, zero = 0
                var unchecked: [(block: Int, pages: [Range<Int>])] = []
                do throws(MigrationError) {
                    while failure.withLock({ $0 == nil }) {
                        let taken = next.add(1, ordering: .relaxed).oldValue
                        guard taken < segments.count else { break }
                        let segment = segments[taken]
                        let read = try readSegment(segment.block, first: segment.first, entry: header.entries[segment.block],
                                                   present: present[segment.block], file: file, list: &list)
                        normal += read.runs.reduce(0) { $0 + $1.count }
                        zero += read.zero
                        // Checked at once while in cache if the block's table is in; else after the last segment.
                        if !read.runs.isEmpty { unchecked.append((segment.block, read.runs)) }
                        while let (block, runs) = unchecked.last, let sums = tables.checksumsIfReady(of: block) {
                            try check(runs, of: header.entries[block], block: block, against: try sums.get())
                            unchecked.removeLast()
                        }
                    }
                    for (block, runs) in unchecked where failure.withLock({ $0 == nil }) {
                        try check(runs, of: header.entries[block], block: block, against: try tables.checksums(of: block))
                    }
                } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
                statistics.withLock { s in
                    s.normalPages += UInt64(normal)
                    s.zeroPages += UInt64(zero)
                }
            }
        }
        for (block, entry) in header.entries.enumerated() where failure.withLock({ $0 == nil }) {
            do throws(MigrationError) {
                tables.publish(block, try MappedRAMImage.readIndex(entry, bitmap: bitmaps[block], of: file).checksums)
            } catch {
                failure.withLock { if $0 == nil { $0 = error } }
                break
            }
        }
        // A reader's failure stops the tables too: a reader waiting for one must hear of it.
        if let error = failure.withLock({ $0 }) { tables.fail(error) }
        for thread in threads { thread.join() }
        if let error = failure.withLock({ $0 }) { throw error }
        load.withLock { $0.pagesLoaded = true }
    }

    /// One segment: its runs of present pages read into guest RAM (to be checked
    /// against their checksums), absent pages zero.
    private func readSegment(_ block: Int, first: Int, entry: MappedRAMBlockEntry, present: [UInt64],
                             file: any PageFile, list: inout ScatterList) throws(MigrationError) -> (runs: [Range<Int>], zero: Int) {
        let end = min(first + Self.restoreSegmentPages, entry.pageCount)
        let pageSize = Self.pageSize
        let mapping = mappings[block]
        var runs: [Range<Int>] = []
        var zero = 0
        var page = first
        while page < end {
            guard MappedRAMBlockIndex.isPresent(page, in: present) else {
                if !destinationStartsZero { mapping.zeroPage(at: page * pageSize) }
                zero += 1
                page += 1
                continue
            }
            var runEnd = page + 1
            while runEnd < end, MappedRAMBlockIndex.isPresent(runEnd, in: present) { runEnd += 1 }
            list.removeAll()
            list.append(mapping, offset: page * pageSize, count: (runEnd - page) * pageSize)
            do { try file.read(into: list, at: entry.pagesOffset + UInt64(page * pageSize)) } catch {
                if error == .endOfStream {
                    throw .stream(.truncated("block '\(entry.name)' page \(page): the file ends inside its page area"))
                }
                throw .channel(error)
            }
            runs.append(page..<runEnd)
            page = runEnd
        }
        return (runs, zero)
    }

    /// Pages read into guest RAM, each against its checksum: a mismatch refuses the restore.
    private func check(_ runs: [Range<Int>], of entry: MappedRAMBlockEntry, block: Int, against checksums: [UInt64]) throws(MigrationError) {
        let pageSize = Self.pageSize
        let mapping = mappings[block]
        for run in runs {
            for page in run {
                let sum = mapping.withSpan(at: page * pageSize, count: pageSize) { FrameChecksum.of($0) }
                guard sum == checksums[page] else {
                    throw .stream(.malformed("block '\(entry.name)' page \(page) (offset \(page * pageSize)) does not match its checksum: the file is corrupt"))
                }
            }
        }
    }
}

/// The checksum tables of a restore's blocks, published one by one by the
/// thread that reads and checks them; readers wait here for the table of the
/// block whose pages they have read.
final class ChecksumTables: Sendable {
    private enum Table { case pending, ready([UInt64]) }
    private let state: Mutex<(tables: [Table], failure: MigrationError?)>
    private let condition = NSCondition()

    init(blocks: Int) { state = Mutex((Array(repeating: .pending, count: blocks), nil)) }

    func publish(_ block: Int, _ checksums: [UInt64]) { change { $0.tables[block] = .ready(checksums) } }

    /// No table comes any more: every wait throws `error`.
    func fail(_ error: MigrationError) { change { $0.failure = error } }

    /// Block `block`'s table if it is in (or the failure that means it never comes), without waiting.
    func checksumsIfReady(of block: Int) -> Result<[UInt64], MigrationError>? {
        state.withLock { s in
            if case .ready(let sums) = s.tables[block] { return .success(sums) }
            return s.failure.map { .failure($0) }
        }
    }

    /// Block `block`'s table, once it is read and checked.
    func checksums(of block: Int) throws(MigrationError) -> [UInt64] {
        condition.lock()
        defer { condition.unlock() }
        while true {
            switch checksumsIfReady(of: block) {
            case .success(let sums)?: return sums
            case .failure(let error)?: throw error
            case nil: condition.wait()
            }
        }
    }

    private func change(_ body: (inout (tables: [Table], failure: MigrationError?)) -> Void) {
        condition.lock()
        state.withLock { body(&$0) }
        condition.broadcast()
        condition.unlock()
    }
}
