import Foundation
import GuestMemory
import Histogram
import HostThreads
import MigrationProtocol
import Synchronization

/// A postcopy destination from the switch to the end: the guest runs on the
/// pages it has, and every page still to come is placed atomically by
/// `PagePlacement`.  A fault thread turns each access to a missing unit into a
/// page request on the return path (or fills a unit with no page to come with
/// zeroes); the loading thread places the pages as they arrive, checked
/// against their checksums and against the discard set, which wakes the
/// vCPUs waiting on them.
///
/// On hugetlb a huge page is placed whole: its 4 KiB pages are gathered in a
/// buffer until the last arrives (the source sends every page of it).
final class PostcopyLoad: Sendable {
    let placement: any PagePlacement
    let layout: [MigrationConfiguration.Block]
    let map: Mutex<PostcopyPageMap>
    /// Per block: pages per placement unit (the map's, read without its lock).
    let unitPages: [Int]
    let ask: @Sendable (_ block: Int, _ offset: Int, _ length: Int) -> Void
    let stopping = Atomic<Bool>(false)
    let thread = Mutex<JoinableThread?>(nil)
    static let pageSize = PageSize.base.byteCount

    struct Record {
        /// Microseconds from a page request to its unit placed.
        var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
        var faults: UInt64 = 0
        var requests: UInt64 = 0
        var zeroFilled: UInt64 = 0
        var placedPages: UInt64 = 0
        var zeroLeft: UInt64 = 0
        /// Times the connection broke and the load waited for a recovery.
        var pauses: UInt64 = 0
        var failure: MigrationError?
    }
    let record = Mutex(Record())
    /// Huge pages being gathered, by block and unit, with the loader (channel) that
    /// carries each: a huge page never travels on two channels.  Their pages stay
    /// "needed" in the map until the unit is placed, so a recovery that drops
    /// them asks for them again.
    let partial = Mutex<[UnitKey: PartialUnit]>([:])

    struct PartialUnit {
        let loader: Int
        /// Made at its first data page: nil for a unit all of whose pages so far are zero.
        var bytes: [UInt8]?
        /// Which of its 4 KiB pages arrived.
        var arrived: DirtyBitmap
    }
    /// A huge page all of whose pages arrived.
    enum WholeUnit {
        case zero
        case data([UInt8])
    }
    /// Huge pages being gathered at once, at most: Ferry's source has one or two
    /// under way; a source that starts many is refused before it costs a lot of memory.
    static let maximumPartial = 64
    /// Told when the fault thread fails: the load cannot go on (the vCPUs would wait forever).
    let onFailure: @Sendable (MigrationError) -> Void

    struct UnitKey: Hashable { let block: Int, unit: Int }

    /// With capability `postcopy-blocktime`: each vCPU's thread (TID), by index.
    let vcpuThreads: [Int32]?

    /// Frees the discarded pages and registers RAM; the guest must not run yet.
    /// `vcpuThreads`: the vCPUs' TIDs, to measure their blocktime (nil: not measured).
    init(discard: PostcopyDiscard, layout: [MigrationConfiguration.Block], placement: any PagePlacement,
         vcpuThreads: [Int32]? = nil,
         ask: @escaping @Sendable (_ block: Int, _ offset: Int, _ length: Int) -> Void,
         onFailure: @escaping @Sendable (MigrationError) -> Void = { _ in }) throws(MigrationError) {
        let unitPages = placement.unitBytes.map { $0 / Self.pageSize }
        var bitmaps: [DirtyBitmap] = []
        for (index, block) in layout.enumerated() {
            let bitmap = DirtyBitmap(words: discard.words[index], pageCount: Int(block.byteCount) / Self.pageSize)
            // A huge page is placed whole, so the source must send it whole.
            for run in bitmap.runs where run.first % unitPages[index] != 0 || run.count % unitPages[index] != 0 {
                throw .stream(.malformed("the postcopy discard set of block '\(block.name)' splits a \(placement.unitBytes[index])-byte page at page \(run.first)"))
            }
            bitmaps.append(bitmap)
        }
        self.placement = placement
        self.layout = layout
        self.ask = ask
        self.onFailure = onFailure
        self.unitPages = unitPages
        self.vcpuThreads = vcpuThreads
        map = Mutex(PostcopyPageMap(discard: bitmaps, unitPages: unitPages, blocktimeVCPUs: vcpuThreads?.count))
        try placement.prepare(discarding: bitmaps.map { $0.runs.map { $0.first * Self.pageSize..<($0.first + $0.count) * Self.pageSize } })
    }

    // MARK: the fault thread

    func start() {
        let started = JoinableThread(name: "mig/dst/fault") { [self] in run() }
        thread.withLock { $0 = started }
    }

    /// Stops the fault thread and waits for it.
    func stop() {
        stopping.store(true, ordering: .releasing)
        placement.interrupt()
        thread.withLock { $0 }?.join()
    }

    var failure: MigrationError? { record.withLock { $0.failure } }

    private func run() {
        // A faulting vCPU waits on this thread's request: it must not wait for a time slice too.
        HostThread.makeUrgent()
        do throws(MigrationError) {
            while !stopping.load(ordering: .acquiring) {
                for fault in try placement.waitForFaults(timeout: .milliseconds(100)) { try handle(fault) }
            }
        } catch {
            record.withLock { $0.failure = error }
            onFailure(error)
        }
    }

    private func handle(_ fault: MissingPageFault) throws(MigrationError) {
        let vcpu = fault.thread == 0 ? nil : vcpuThreads?.firstIndex(of: fault.thread)
        let action = map.withLock { $0.fault(block: fault.block, offset: fault.offset, vcpu: vcpu, at: .now) }
        record.withLock { $0.faults += 1 }
        switch action {
        case .waiting:
            return
        case .request(let offset, let length):
            record.withLock { $0.requests += 1 }
            ask(fault.block, offset, length)
        case .absent(let offset, let length):
            // Zero on the source; or placed since the fault was reported, and then the wake is all it needs.
            if try placement.placeZero(block: fault.block, offset: offset, length: length) {
                record.withLock { $0.zeroFilled += 1 }
            } else {
                try placement.wake(block: fault.block, offset: offset, length: length)
            }
        }
    }

    // MARK: the loading thread

    /// Places the pages of one frame: `data` holds its data pages in record
    /// order, each already checked against its checksum.  A page not in the
    /// discard set, or arriving twice, is refused, but for the second copy of a
    /// 4 KiB page asked for, which is dropped (`PostcopyPicker`'s resend).
    func place(_ records: [PageRecord], data: [UInt8], loader: Int = 0) throws(MigrationError) {
        var position = 0
        var index = 0
        while index < records.count {
            let record = records[index]
            let page = Int(record.offset) / Self.pageSize
            let unitPages = self.unitPages[record.block]
            guard map.withLock({ $0.isNeeded(block: record.block, page: page) }) else {
                if unitPages == 1, map.withLock({ $0.takeSecondCopy(block: record.block, page: page) }) {
                    if record.kind == .data { position += Self.pageSize }
                    index += 1
                    continue
                }
                throw .stream(.unexpectedFrame("page at offset \(record.offset) of RAM block '\(layout[record.block].name)' arrived in postcopy, but it was not in the discard set or arrived already"))
            }
            if unitPages > 1 {
                try gather(record, page: page, unitPages: unitPages, data: data, position: &position, loader: loader)
                index += 1
                continue
            }
            // A run of records of the same kind at consecutive offsets goes in one call.
            var end = index + 1
            while end < records.count, records[end].block == record.block, records[end].kind == record.kind,
                  records[end].offset == records[end - 1].offset + UInt64(Self.pageSize),
                  map.withLock({ $0.isNeeded(block: record.block, page: Int(records[end].offset) / Self.pageSize) }) {
                end += 1
            }
            let count = end - index
            let bytes = count * Self.pageSize
            if record.kind == .data {
                if !(try placement.place(data, range: position..<position + bytes, block: record.block, offset: Int(record.offset))) {
                    try placeEach(data, from: position, block: record.block, offset: Int(record.offset), count: count)
                }
                position += bytes
            } else {
                _ = try placement.placeZero(block: record.block, offset: Int(record.offset), length: bytes)
            }
            placed(block: record.block, pages: page..<page + count)
            index = end
        }
    }

    /// A run that found a page there already (placed as zero meanwhile): page by page.
    private func placeEach(_ data: [UInt8], from position: Int, block: Int, offset: Int, count: Int) throws(MigrationError) {
        for i in 0..<count {
            let at = position + i * Self.pageSize
            _ = try placement.place(data, range: at..<at + Self.pageSize, block: block, offset: offset + i * Self.pageSize)
        }
    }

    /// One 4 KiB page of a huge page: into its buffer, and the huge page placed once whole.
    /// Checked, gathered and counted under one lock (the two loaders never share a
    /// unit: one that tries is refused); placed outside it.
    private func gather(_ record: PageRecord, page: Int, unitPages: Int, data: [UInt8], position: inout Int,
                        loader: Int) throws(MigrationError) {
        let key = UnitKey(block: record.block, unit: page / unitPages)
        let unitBytes = unitPages * Self.pageSize
        let at = (page % unitPages) * Self.pageSize
        let first = key.unit * unitPages
        let bytes: ArraySlice<UInt8>? = record.kind == .data ? data[position..<position + Self.pageSize] : nil
        if record.kind == .data { position += Self.pageSize }
        let name = layout[record.block].name
        let complete = try partial.withLock { units throws(MigrationError) -> WholeUnit? in
            // A huge page is discarded whole (checked at the switch), so all its pages come, each once.
            var entry = units.removeValue(forKey: key)
                ?? PartialUnit(loader: loader, arrived: DirtyBitmap(pageCount: unitPages))
            guard entry.loader == loader, !entry.arrived[page % unitPages] else {
                let twice = entry.loader == loader
                units[key] = entry
                throw .stream(.unexpectedFrame(twice
                    ? "page at offset \(page * Self.pageSize) of RAM block '\(name)' arrived twice in postcopy"
                    : "the huge page at offset \(first * Self.pageSize) of RAM block '\(name)' arrived on two channels"))
            }
            if let bytes {
                if entry.bytes == nil { entry.bytes = [UInt8](repeating: 0, count: unitBytes) }
                entry.bytes!.replaceSubrange(at..<at + Self.pageSize, with: bytes)
            }
            entry.arrived[page % unitPages] = true
            // The page is in the buffer, not yet in RAM: still "needed" for a fault, which then waits.
            guard entry.arrived.count == unitPages else {
                guard units.count < Self.maximumPartial else {
                    throw .stream(.malformed("more than \(Self.maximumPartial) huge pages under way at once"))
                }
                units[key] = entry
                return nil
            }
            return entry.bytes.map { .data($0) } ?? .zero
        }
        switch complete {
        case nil:
            return
        case .data(let bytes):
            _ = try placement.place(bytes, range: 0..<unitBytes, block: record.block, offset: first * Self.pageSize)
        case .zero:
            // A zero huge page nobody waits for is not placed (unless RAM was preallocated):
            // placing it zeroes 2 MiB of fresh memory (hugetlb has no zero page), 2-4 ms
            // here, and a requested page behind a run of them in the stream waited for all
            // of them.  A later access fills it on the fault thread (`absent`).
            if placement.leavesZeroUnits, map.withLock({ $0.leaveZero(block: record.block, unit: key.unit) }) {
                self.record.withLock { $0.zeroLeft += UInt64(unitPages) }
                return
            }
            _ = try placement.placeZero(block: record.block, offset: first * Self.pageSize, length: unitBytes)
        }
        placed(block: record.block, pages: first..<first + unitPages)
    }

    private func placed(block: Int, pages: Range<Int>) {
        let latencies = map.withLock { $0.placed(block: block, pages: pages, at: .now) }
        record.withLock { r in
            r.placedPages += UInt64(pages.count)
            for latency in latencies {
                let micros = latency.components.seconds * 1_000_000 + latency.components.attoseconds / 1_000_000_000_000
                _ = r.latency.record(UInt64(max(1, micros)))
            }
        }
    }

    /// The stream ended: every page must be here.  Stops the fault thread and
    /// makes RAM ordinary memory again.  A page missing leaves the fault thread
    /// running (a recovery may still bring it).
    func finish() throws(MigrationError) {
        if let failure { throw failure }
        if let (block, page) = map.withLock({ $0.firstNeeded }) {
            let count = map.withLock { $0.neededCount }
            throw .stream(.incomplete("the postcopy stream ended with \(count) page(s) never sent (the first: offset \(page * Self.pageSize) of RAM block '\(layout[block].name)')"))
        }
        stop()
        if let failure { throw failure }
        try placement.releaseAll()
    }

    // MARK: recovery

    /// The connection broke: huge pages half gathered are dropped (their pages
    /// are still to come, and come again whole).  The fault thread runs on: a
    /// vCPU that touches a missing page waits, and its request is asked again
    /// once a new connection is made (`outstandingRequests`).
    func pause(counting: Bool = true) {
        partial.withLock { $0.removeAll() }
        if counting { record.withLock { $0.pauses += 1 } }
    }

    /// Per block, the pages that are here (the received bitmap the source resends against).
    var receivedWords: [[UInt64]] { map.withLock { $0.receivedWords } }

    /// The units asked for and not yet placed, oldest first.
    var outstandingRequests: [(block: Int, offset: Int, length: Int)] { map.withLock { $0.outstandingRequests } }

    var statistics: PostcopyStatistics {
        let blocktime = map.withLock { $0.blocktime?.report }
        return record.withLock { r in
            PostcopyStatistics(faults: r.faults, requests: r.requests, zeroFilled: r.zeroFilled, placedPages: r.placedPages, zeroLeft: r.zeroLeft,
                               pauses: r.pauses, latency: LatencySummary(r.latency), blocktime: blocktime)
        }
    }
}

/// A postcopy destination's figures (Ferry's `x-ferry-postcopy` in `query-migrate`).
public struct PostcopyStatistics: Equatable, Sendable {
    /// Accesses to missing pages the fault thread read.
    public var faults: UInt64
    /// Page requests sent to the source.
    public var requests: UInt64
    /// Missing units with no page to come, filled with zeroes here.
    public var zeroFilled: UInt64
    /// 4 KiB pages placed since the switch.
    public var placedPages: UInt64
    /// 4 KiB pages of huge pages that arrived all zero with nobody waiting for
    /// them, counted as here and left unplaced (their memory reads as zero).
    public var zeroLeft: UInt64
    /// Times the connection broke and the load waited for a recovery.
    public var pauses: UInt64 = 0
    /// Microseconds from a request to its page placed.
    public var latency: LatencySummary?
    /// With capability `postcopy-blocktime`: how long the vCPUs waited (QEMU's figures).
    public var blocktime: PostcopyBlocktimeReport?
}
