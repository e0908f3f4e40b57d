import GuestMemory
import MigrationProtocol
import Synchronization

/// Guest RAM as migratable state: the dirty bitmap per block, the pass through
/// it, and the page records on both sides.
///
/// Source: `setup` starts dirty tracking with every page dirty; `iterate` sends
/// dirty pages (zero pages as zero records) from where the last call stopped;
/// `pendingExact` syncs the dirty log.  The bitmap and its count are exact:
/// a page is cleared the moment its record is built, and a sync ORs new pages
/// in, counting only those not already pending.
/// Destination: `loadResidency` starts allocating the chunks the source has
/// resident on helper threads, ahead of the pages; `loadPages` writes checked
/// records into the blocks; `endLoad` stops the helpers.  When the blocks are
/// known to start zero (a fresh incoming machine), zero records for pages never
/// loaded are skipped, so idle memory is neither read nor allocated.
public final class RAMMigration: Migratable {
    public let sectionName = "ram"
    public let sectionVersion: UInt16 = 1
    public static let pageSize = PageSize.base.byteCount
    /// Page frames are cut at about this size.
    static let batchBytes = 1 << 20
    /// One `iterate` call sends at most this much, or looks at this many pages
    /// (zero pages cost little to send), so the loop re-checks often.
    static let iterationBytes = 16 << 20
    static let iterationPages = 64 << 10
    /// The residency granule: what the source reports and the destination allocates ahead.
    static let chunkBytes = Int(RAMResidency.chunkBytes)

    let blocks: [RAMBlock]
    let tracker: (any DirtyPageSource)?
    public let layout: [MigrationConfiguration.Block]

    struct SendState {
        var bitmaps: [DirtyBitmap]
        var dirtyCount = 0
        var cursor = (block: 0, page: 0)
        var batch = PageBatchWriter(capacity: RAMMigration.batchBytes + 2 * RAMMigration.pageSize)
        var lastSync = ContinuousClock.now
        var tracking = false
        /// The chunks resident (in RAM or swap) when tracking started, until the next
        /// sync: a page in a chunk that was not resident is zero for this pass
        /// (a later write is in the dirty log), so it is not even read.
        var resident: [DirtyBitmap]?
    }
    let send: Mutex<SendState>
    let statistics = Mutex(RAMStatistics())

    struct LoadState {
        /// Pages `loadPages` wrote data into; kept when the blocks started zero.
        var loaded: [DirtyBitmap]
        var populators: [ChunkPopulator] = []
        var residencyLoaded = false
        var pagesLoaded = false
    }
    let load: Mutex<LoadState>
    let destinationStartsZero: Bool

    /// `tracker` is needed on the source only.  `destinationStartsZero`: on the
    /// destination, every byte of `blocks` is zero before the load (a fresh
    /// incoming machine whose guest has not run).
    public init(blocks: [RAMBlock], tracker: (any DirtyPageSource)?, destinationStartsZero: Bool = false) {
        self.blocks = blocks
        self.tracker = tracker
        self.destinationStartsZero = destinationStartsZero
        load = Mutex(LoadState(loaded: destinationStartsZero ? blocks.map { DirtyBitmap(pageCount: Int($0.byteCount) / Self.pageSize) } : []))
        layout = Self.layout(of: blocks)
        send = Mutex(SendState(bitmaps: blocks.map { DirtyBitmap(pageCount: Int($0.byteCount) / Self.pageSize) }))
        statistics.withLock { $0.totalBytes = blocks.reduce(0) { $0 + $1.byteCount } }
    }

    public var stats: RAMStatistics { statistics.withLock { $0 } }

    /// The blocks as the configuration describes them: name, size, 4 KiB migration pages.
    public static func layout(of blocks: [RAMBlock]) -> [MigrationConfiguration.Block] {
        blocks.map { MigrationConfiguration.Block(name: $0.name, byteCount: $0.byteCount, pageSize: UInt32(pageSize)) }
    }

    // MARK: source

    public func setup() throws(MigrationError) {
        guard let tracker else { throw .invalidState("RAM has no dirty-page source") }
        do { try tracker.startTracking() } catch { throw .state("cannot start dirty tracking: \(error)") }
        send.withLock { $0.tracking = true }
        _ = try sync()      // the first collection reports every page
        let resident = residentChunks()
        send.withLock { $0.resident = resident }
    }

    public func cleanup() throws(MigrationError) {
        let wasTracking = send.withLock { state in
            defer { state.tracking = false }
            return state.tracking
        }
        guard wasTracking, let tracker else { return }
        do { try tracker.stopTracking() } catch { throw .state("cannot stop dirty tracking: \(error)") }
    }

    /// Which chunks of each block held memory when tracking started (sent
    /// before the first page).
    public func residency() -> RAMResidency {
        RAMResidency(words: (send.withLock { $0.resident } ?? residentChunks()).map(\.words))
    }

    private func residentChunks() -> [DirtyBitmap] {
        blocks.map { $0.mapping.residentChunks(chunkBytes: Self.chunkBytes) }
    }

    public func pendingEstimate() -> UInt64 {
        UInt64(send.withLock { $0.dirtyCount }) * UInt64(Self.pageSize)
    }

    public func pendingExact() throws(MigrationError) -> UInt64 {
        _ = try sync()
        return pendingEstimate()
    }

    /// Collects the dirty log into the bitmaps; returns how many pages the guest
    /// dirtied since the previous sync.
    @discardableResult
    public func sync() throws(MigrationError) -> Int {
        guard let tracker else { throw .invalidState("RAM has no dirty-page source") }
        let collected: [String: DirtyBitmap]
        do { collected = try tracker.collectDirtyPages() } catch { throw .state("cannot read the dirty log: \(error)") }
        let now = ContinuousClock.now
        let (dirtied, remaining, elapsed) = send.withLock { state -> (Int, Int, Duration) in
            var dirtied = 0
            for (index, block) in blocks.enumerated() {
                guard let bitmap = collected[block.name] else { continue }
                dirtied += bitmap.count
                state.dirtyCount += state.bitmaps[index].merge(bitmap)
            }
            defer { state.lastSync = now }
            state.resident = nil        // pages dirtied since setup may sit in chunks that were not resident
            return (dirtied, state.dirtyCount, now - state.lastSync)
        }
        statistics.withLock { s in
            s.dirtySyncCount += 1
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            if s.dirtySyncCount > 1, seconds > 0 { s.dirtyPagesRate = UInt64(Double(dirtied) / seconds) }
            s.remainingPages = UInt64(remaining)
        }
        return dirtied
    }

    public func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool {
        try sendDirtyPages(output, limit: Self.iterationBytes, respectRateLimit: true)
    }

    public func complete(_ output: StreamWriter) throws(MigrationError) {
        _ = try sync()
        while !(try sendDirtyPages(output, limit: .max, respectRateLimit: false)) {}
    }

    public func load(_ section: StateSection) throws(MigrationError) {
        throw .stream(.unexpectedFrame("RAM travels in page frames, not a section"))
    }

    /// Sends dirty pages from the cursor until `limit` bytes went out, the rate
    /// limit's window is spent, or no dirty page is left (`true`).
    func sendDirtyPages(_ output: StreamWriter, limit: Int, respectRateLimit: Bool) throws(MigrationError) -> Bool {
        let pageSize = Self.pageSize
        let mappings = blocks.map(\.mapping)      // a local array: borrowed per page, not retained
        var sent = 0
        return try send.withLock { state throws(MigrationError) -> Bool in
            var normal = 0, zero = 0
            defer {
                let remaining = state.dirtyCount
                statistics.withLock { s in
                    s.normalPages += UInt64(normal)
                    s.zeroPages += UInt64(zero)
                    s.remainingPages = UInt64(remaining)
                }
            }
            while state.dirtyCount > 0 {
                // Wrap to the next block (and round) when this one has no more dirty pages.
                guard let page = state.bitmaps[state.cursor.block].nextSetPage(from: state.cursor.page) else {
                    state.cursor = ((state.cursor.block + 1) % blocks.count, 0)
                    continue
                }
                let blockIndex = state.cursor.block
                state.bitmaps[blockIndex][page] = false
                state.dirtyCount -= 1
                state.cursor.page = page + 1
                let offset = page * pageSize
                let mapping = mappings[blockIndex]
                let chunkWasResident = state.resident?[blockIndex][offset / Self.chunkBytes] ?? true
                if !chunkWasResident || mapping.isZeroPage(at: offset) {
                    state.batch.append(block: blockIndex, offset: UInt64(offset), page: nil)
                    zero += 1
                } else {
                    state.batch.appendData(block: blockIndex, offset: UInt64(offset)) { mapping.appendPage(at: offset, to: &$0) }
                    normal += 1
                }
                if state.batch.byteCount >= Self.batchBytes || (respectRateLimit && normal + zero >= Self.iterationPages) {
                    sent += try flush(&state.batch, output)
                    if sent >= limit || (respectRateLimit && (output.isRateLimited || normal + zero >= Self.iterationPages)) {
                        return state.dirtyCount == 0
                    }
                }
            }
            sent += try flush(&state.batch, output)
            return true
        }
    }

    private func flush(_ batch: inout PageBatchWriter, _ output: StreamWriter) throws(MigrationError) -> Int {
        guard batch.count > 0 else { return 0 }
        let size = batch.byteCount
        do { try batch.withPayload { try output.send(.pages, payload: $0) } } catch let error as MigrationError { throw error }
        catch { throw .state("\(error)") }
        batch.reset()
        return size
    }

    // MARK: destination

    /// Starts allocating the chunks the source reports resident, one helper per
    /// block.  At most once, before the first page.
    public func loadResidency(_ payload: [UInt8]) throws(MigrationError) {
        let residency: RAMResidency
        do { residency = try RAMResidency(decoding: payload, layout: layout) } catch { throw .stream(error) }
        try load.withLock { (state: inout LoadState) throws(MigrationError) in
            guard !state.residencyLoaded, !state.pagesLoaded else {
                throw .stream(.unexpectedFrame("a residency frame after \(state.pagesLoaded ? "pages" : "another residency frame")"))
            }
            state.residencyLoaded = true
            state.populators = zip(blocks, residency.words).map { block, words in
                let chunks = DirtyBitmap(words: words, pageCount: RAMResidency.chunkCount(byteCount: block.byteCount))
                return ChunkPopulator.start(mapping: block.mapping, chunks: chunks, chunkBytes: Self.chunkBytes)
            }
        }
    }

    /// Applies one `pages` frame: every record is checked against the layout
    /// before its page is written.
    public func loadPages(_ payload: [UInt8]) throws(MigrationError) {
        let reader = PageBatchReader(layout: layout)
        let mappings = blocks.map(\.mapping)      // a local array: borrowed per record, not retained
        var normal = 0, zero = 0
        let startsZero = destinationStartsZero
        do {
            try load.withLock { (state: inout LoadState) throws(ProtocolError) in
                state.pagesLoaded = true
                var last = (block: -1, offset: 0)
                try reader.forEachRecord(in: payload) { block, offset, kind, range throws(ProtocolError) in
                    let page = Int(offset) / Self.pageSize
                    if kind == .data {
                        mappings[block].storePage(payload, range: range, at: Int(offset))
                        if startsZero { state.loaded[block][page] = true }
                        normal += 1
                    } else {
                        // A page never loaded into memory that started zero is zero already.
                        if !startsZero || state.loaded[block][page] { mappings[block].zeroPage(at: Int(offset)) }
                        zero += 1
                    }
                    last = (block, Int(offset))
                }
                if last.block >= 0 && last.block < state.populators.count {
                    state.populators[last.block].writerReached(offset: last.offset)
                }
            }
        } catch { throw .stream(error) }
        statistics.withLock { s in
            s.normalPages += UInt64(normal)
            s.zeroPages += UInt64(zero)
        }
    }

    /// The load is over, finished or failed: the allocation helpers stop.
    public func endLoad() {
        let populators = load.withLock { state in
            defer { state.populators = [] }
            return state.populators
        }
        for populator in populators { populator.stop() }
    }
}

/// RAM counters for `query-migrate`'s `ram` member.
public struct RAMStatistics: Equatable, Sendable {
    public var totalBytes: UInt64 = 0
    public var normalPages: UInt64 = 0
    public var zeroPages: UInt64 = 0
    public var remainingPages: UInt64 = 0
    public var dirtySyncCount: UInt64 = 0
    public var dirtyPagesRate: UInt64 = 0
    public var pageSize: UInt64 { UInt64(RAMMigration.pageSize) }
}
