import Foundation
import GuestMemory
import Histogram
import MigrationProtocol
import Synchronization

/// A restore from a mapped-ram file whose guest runs before its memory is read
/// (Ferry's `x-ferry-lazy-restore`): the device state is loaded, all RAM is
/// registered for missing-page faults, and the guest starts.  A fault thread
/// serves each access to a page not yet there straight from the file (its
/// fixed offset), and prefetch threads read the rest in parallel, in order,
/// until every page is in; then RAM is ordinary memory again.
///
/// Every page read is checked against its checksum before it is placed, so the
/// guest never sees a corrupt page; a corrupt or unreadable file stops the
/// restore, and the machine stops its guest (it cannot go on without that page).
/// Units (4 KiB, or 2 MiB on hugetlb) are placed whole and atomically
/// (`PagePlacement`); two threads that read the same unit both try, and the
/// second's placement finds it there and only wakes the waiting vCPU.
public final class LazyRestore: Sendable {
    /// Pages one prefetch read takes (a multiple of every unit: 2 MiB).
    static let prefetchPages = 512
    static let pageSize = PageSize.base.byteCount

    let placement: any PagePlacement
    let image: MappedRAMImage
    let file: any PageFile
    let unitPages: [Int]
    let readers: Int
    let onFailure: @Sendable (MigrationError) -> Void

    struct State {
        /// Units placed, per block.
        var placed: [DirtyBitmap]
        var placedUnits = 0
        let totalUnits: Int
        var finished = false
    }
    let state: Mutex<State>
    let stopping = Atomic<Bool>(false)
    let nextSegment = Atomic<Int>(0)
    let threads = Mutex<[JoinableThread]>([])
    /// Threads still running (the file stays open until none is).
    let running = Atomic<Int>(0)
    let started = ContinuousClock.now

    struct Record {
        var faults: UInt64 = 0
        var faultPages: UInt64 = 0
        var prefetchedPages: UInt64 = 0
        var zeroPages: UInt64 = 0
        /// Microseconds from a fault read to its unit placed by the fault thread.
        var faultLatency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var loadTime: Duration?
        var failure: MigrationError?
    }
    let record = Mutex(Record())

    /// Frees and registers all RAM; the guest must not run yet.
    public init(image: MappedRAMImage, file: any PageFile, placement: any PagePlacement, readers: Int,
                onFailure: @escaping @Sendable (MigrationError) -> Void) throws(MigrationError) {
        let unitPages = placement.unitBytes.map { $0 / Self.pageSize }
        self.placement = placement
        self.image = image
        self.file = file
        self.unitPages = unitPages
        self.readers = max(1, readers)
        self.onFailure = onFailure
        let units = image.indexes.enumerated().map { block, index in index.pageCount / unitPages[block] }
        state = Mutex(State(placed: units.map { DirtyBitmap(pageCount: $0) }, totalUnits: units.reduce(0, +)))
        try placement.prepare(discarding: image.indexes.map { [0..<($0.pageCount * Self.pageSize)] })
    }

    /// Starts the fault thread and the prefetch threads (the guest may run now).
    /// The last of them to end closes the file once every unit is in: no read
    /// can then still be under way.
    public func start() {
        running.store(1 + readers, ordering: .releasing)
        var started = [JoinableThread(name: "ferry-lazy-fault") { [self] in serveFaults(); threadEnded() }]
        for _ in 0..<readers { started.append(JoinableThread(name: "ferry-prefetch") { [self] in prefetch(); threadEnded() }) }
        threads.withLock { $0 = started }
    }

    private func threadEnded() {
        if running.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 && isComplete { file.close() }
    }

    /// Stops every thread and waits for them (the machine goes away).  RAM that
    /// was not read stays registered: whoever touches it waits; only for a guest
    /// that is being thrown away, whose RAM is then let go with `abandon()`.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        placement.interrupt()
        for thread in threads.withLock({ $0 }) { thread.join() }
    }

    /// Stops, and makes RAM ordinary memory whatever it holds.
    public func abandon() {
        stop()
        try? placement.releaseAll()
        if !isComplete { file.close() }      // complete: the last thread closed it
    }

    public var isComplete: Bool { state.withLock { $0.finished } }
    public var failure: MigrationError? { record.withLock { $0.failure } }

    public var statistics: LazyRestoreStatistics {
        let (placed, total, finished) = state.withLock { ($0.placedUnits, $0.totalUnits, $0.finished) }
        return record.withLock { r in
            LazyRestoreStatistics(faults: r.faults, faultPages: r.faultPages, prefetchedPages: r.prefetchedPages, zeroPages: r.zeroPages,
                                  loadedUnits: UInt64(placed), totalUnits: UInt64(total), complete: finished,
                                  loadTime: r.loadTime, faultLatency: LatencySummary(r.faultLatency))
        }
    }

    // MARK: threads

    private func fail(_ error: MigrationError) {
        let first = record.withLock { r -> Bool in
            guard r.failure == nil else { return false }
            r.failure = error
            return true
        }
        stopping.store(true, ordering: .releasing)
        placement.interrupt()
        if first { onFailure(error) }
    }

    private func serveFaults() {
        do throws(MigrationError) {
            while !stopping.load(ordering: .acquiring) && !isComplete {
                for fault in try placement.waitForFaults(timeout: .milliseconds(100)) {
                    let begin = ContinuousClock.now
                    let unit = fault.offset / (unitPages[fault.block] * Self.pageSize)
                    try serve(block: fault.block, units: unit..<(unit + 1), wakeIfPlaced: true)
                    let micros = (ContinuousClock.now - begin).components
                    record.withLock { r in
                        r.faults += 1
                        r.faultLatency.record(UInt64(max(1, micros.seconds * 1_000_000 + micros.attoseconds / 1_000_000_000_000)))
                    }
                }
            }
        } catch { failUnlessComplete(error) }
    }

    /// A thread's error, unless the restore completed meanwhile: another thread
    /// placed the last unit while this one was reading units it had found
    /// missing, and released RAM, so its own placement failed (`UFFDIO_COPY`
    /// on RAM no longer registered).  Every unit is in, each checked: nothing
    /// failed.
    private func failUnlessComplete(_ error: MigrationError) {
        if !isComplete { fail(error) }
    }

    /// Segments of `prefetchPages`, block by block, lowest first, taken by the readers in turn.
    private func prefetch() {
        let segments = image.indexes.map { ($0.pageCount + Self.prefetchPages - 1) / Self.prefetchPages }
        do throws(MigrationError) {
            while !stopping.load(ordering: .acquiring) {
                var taken = nextSegment.add(1, ordering: .relaxed).oldValue
                guard let block = segments.indices.first(where: { index in
                    if taken < segments[index] { return true }
                    taken -= segments[index]
                    return false
                }) else { return }
                let firstPage = taken * Self.prefetchPages
                let lastPage = min(firstPage + Self.prefetchPages, image.indexes[block].pageCount)
                let units = firstPage / unitPages[block]..<(lastPage / unitPages[block])
                try serve(block: block, units: units, wakeIfPlaced: false)
            }
        } catch { failUnlessComplete(error) }
    }

    /// Reads, checks and places the units of `units` not placed yet (counted as
    /// a fault's pages when `wakeIfPlaced`, else as prefetched); returns the
    /// pages this call placed.  `wakeIfPlaced`: a unit another thread placed
    /// meanwhile is woken (a fault waits on it).
    @discardableResult
    private func serve(block: Int, units: Range<Int>, wakeIfPlaced: Bool) throws(MigrationError) -> Int {
        let unitBytes = unitPages[block] * Self.pageSize
        var placedPages = 0
        var unit = units.lowerBound
        while unit < units.upperBound {
            // The next run of units not placed yet.
            let pending = state.withLock { s -> Range<Int>? in
                var first = unit
                while first < units.upperBound && s.placed[block][first] { first += 1 }
                guard first < units.upperBound else { return nil }
                var end = first + 1
                while end < units.upperBound && !s.placed[block][end] { end += 1 }
                return first..<end
            }
            guard let run = pending else {
                if wakeIfPlaced { try placement.wake(block: block, offset: unit * unitBytes, length: (units.upperBound - unit) * unitBytes) }
                break
            }
            if wakeIfPlaced && run.lowerBound > unit {
                try placement.wake(block: block, offset: unit * unitBytes, length: (run.lowerBound - unit) * unitBytes)
            }
            let bytes = try read(block: block, pages: run.lowerBound * unitPages[block]..<run.upperBound * unitPages[block])
            placedPages += try place(bytes, block: block, units: run, wakeIfPlaced: wakeIfPlaced)
            unit = run.upperBound
        }
        return placedPages
    }

    /// The pages of `pages` as the file holds them (absent ones zero), each checked.
    private func read(block: Int, pages: Range<Int>) throws(MigrationError) -> [UInt8]? {
        let index = image.indexes[block], entry = image.header.entries[block]
        guard (pages.lowerBound..<pages.upperBound).contains(where: { index[$0] }) else { return nil }    // all zero
        var bytes = [UInt8](repeating: 0, count: pages.count * Self.pageSize)
        var page = pages.lowerBound
        while page < pages.upperBound {
            guard index[page] else { page += 1; continue }
            var end = page + 1
            while end < pages.upperBound && index[end] { end += 1 }
            let data: [UInt8]
            do { data = try file.read((end - page) * Self.pageSize, at: entry.pagesOffset + UInt64(page * Self.pageSize)) } catch {
                if error == .endOfStream { throw .stream(.truncated("block '\(entry.name)' page \(page): the file ends inside its page area")) }
                throw .channel(error)
            }
            for check in page..<end {
                let at = (check - page) * Self.pageSize
                guard FrameChecksum.of(data[at..<(at + Self.pageSize)]) == index.checksums[check] else {
                    throw .stream(.malformed("block '\(entry.name)' page \(check) (offset \(check * Self.pageSize)) does not match its checksum: the file is corrupt"))
                }
            }
            bytes.replaceSubrange((page - pages.lowerBound) * Self.pageSize..<(end - pages.lowerBound) * Self.pageSize, with: data)
            page = end
        }
        return bytes
    }

    /// Places `units` of `block` from `bytes` (nil: all zero); a unit another
    /// thread placed first is left as it is (and, for a fault, woken).
    private func place(_ bytes: [UInt8]?, block: Int, units: Range<Int>, wakeIfPlaced: Bool) throws(MigrationError) -> Int {
        let unitBytes = unitPages[block] * Self.pageSize
        let offset = units.lowerBound * unitBytes, length = units.count * unitBytes
        let whole: Bool
        if let bytes { whole = try placement.place(bytes, range: 0..<length, block: block, offset: offset) }
        else { whole = try placement.placeZero(block: block, offset: offset, length: length) }
        if !whole && wakeIfPlaced { try placement.wake(block: block, offset: offset, length: length) }
        // Counted before the last unit can mark the restore complete, so a complete
        // restore's figures always add up (a reader of them waits for `complete`).
        let pages = UInt64(units.count * unitPages[block])
        record.withLock { r in
            if bytes == nil { r.zeroPages += pages }
            if wakeIfPlaced { r.faultPages += pages } else { r.prefetchedPages += pages }
        }
        let complete = state.withLock { s -> Bool in
            for unit in units where !s.placed[block][unit] {
                s.placed[block][unit] = true
                s.placedUnits += 1
            }
            guard !s.finished, s.placedUnits == s.totalUnits else { return false }
            s.finished = true
            return true
        }
        if complete { try finish() }
        return units.count * unitPages[block]
    }

    /// Every unit is in: RAM becomes ordinary memory, and the threads end.
    private func finish() throws(MigrationError) {
        try placement.releaseAll()
        record.withLock { $0.loadTime = ContinuousClock.now - started }
        stopping.store(true, ordering: .releasing)
        placement.interrupt()
    }
}

/// A lazy restore's figures (`query-migrate`'s `x-ferry-lazy-restore`).
public struct LazyRestoreStatistics: Equatable, Sendable {
    /// Accesses to pages not yet read, served by the fault thread.
    public var faults: UInt64
    public var faultPages: UInt64
    public var prefetchedPages: UInt64
    /// Pages the file lacks (zero), placed as zero pages.
    public var zeroPages: UInt64
    public var loadedUnits: UInt64
    public var totalUnits: UInt64
    public var complete: Bool
    /// From the start of the lazy load to its last unit.
    public var loadTime: Duration?
    /// Microseconds from a fault's read to its unit placed.
    public var faultLatency: LatencySummary?
}
