import Compression
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
    /// Pages go out in frames of at most this many (1 MiB of data).
    static let jobPages = 256
    /// Pages a mapped-ram writer takes at a time: one `pwritev` of 4 MiB for a run
    /// of present pages, which a disk takes faster than 1 MiB ones with O_DIRECT.
    static let fileJobPages = 1024
    /// One `iterate` call sends at most this much, or looks at this many pages
    /// (zero pages cost little to send), so the loop re-checks often.
    static let iterationBytes = 16 << 20
    static let iterationPages = 64 << 10
    /// The residency granule: what the source reports and the destination allocates ahead.
    static let chunkBytes = Int(RAMResidency.chunkBytes)

    let blocks: [RAMBlock]
    /// Some block has huge pages (postcopy's pace follows other rules then).
    var hasHugePages: Bool { blocks.contains { $0.pageSize != .base } }
    let mappings: [HostMapping]
    let tracker: (any DirtyPageSource)?
    public let layout: [MigrationConfiguration.Block]

    /// How picked pages leave: on the main stream by the migration thread, or
    /// through the multifd channels.
    enum PagePath: Sendable {
        case inline(ZeroPageDetection)
        case multifd(MultifdSender, ZeroPageDetection)
    }
    let path = Mutex(PagePath.inline(.multifd))

    struct SendState {
        var selector: PageSelector
        var lastSync = ContinuousClock.now
        var tracking = false
        /// Leave tracking on at cleanup (an incremental mapped-ram save completed).
        var keepTracking = false
        /// Cleanup ran: tracking is off (or kept) and stays so.
        var released = false
        /// Syncs so far: free page hints name the one their round followed.
        var syncEpoch: UInt64 = 0
        /// The discard set sent at the switch to postcopy: the only pages a recovery may resend.
        var postcopyDiscard: [DirtyBitmap]?
        /// After the switch to postcopy: what goes next, and where (the migration
        /// thread picks the background, the return path's reader the requests).
        var picker = PostcopyPicker(unitPages: [], preempt: false)
    }
    /// The dirty bitmaps and the cursor: held only while pages are picked, never across I/O.
    let send: Mutex<SendState>
    let statistics = RAMCounters()

    struct LoadState {
        /// Pages a load wrote data into; kept when the blocks started zero.
        var loaded: [DirtyBitmap]
        /// Pages whose data did not match its checksum, until a later copy does.
        var suspect: [DirtyBitmap]
        var suspectCount = 0
        var populators: [ChunkPopulator] = []
        var residencyLoaded = false
        var pagesLoaded = false
        /// After the switch to postcopy: pages are placed through it.
        var postcopy: PostcopyLoad?
    }
    let load: Mutex<LoadState>
    let destinationStartsZero: Bool
    /// Source: dirty tracking is still on from an earlier save that kept it (`x-ferry-incremental`).
    let trackingKeptOn: Bool
    /// Destination: allocate the resident chunks ahead of the pages (off when a
    /// switch to postcopy may come: it would free them again at the switch).
    let allocateAhead: Bool
    /// Free page hints (a virtio-balloon's), told around every sync; source only.
    let freePageHints: (any FreePageHints)?

    /// `tracker` is needed on the source only.  `destinationStartsZero`: on the
    /// destination, every byte of `blocks` is zero before the load (a fresh
    /// incoming machine whose guest has not run).
    /// `trackingKeptOn`: on the source, `tracker` has been tracking since an
    /// earlier save left it on.
    public init(blocks: [RAMBlock], tracker: (any DirtyPageSource)?, destinationStartsZero: Bool = false, trackingKeptOn: Bool = false,
                allocateAhead: Bool = true, freePageHints: (any FreePageHints)? = nil) {
        self.blocks = blocks
        self.freePageHints = freePageHints
        self.allocateAhead = allocateAhead
        self.trackingKeptOn = trackingKeptOn
        self.mappings = blocks.map(\.mapping)
        self.tracker = tracker
        self.destinationStartsZero = destinationStartsZero
        let empty = blocks.map { DirtyBitmap(pageCount: Int($0.byteCount) / Self.pageSize) }
        load = Mutex(LoadState(loaded: destinationStartsZero ? empty : [], suspect: empty))
        layout = Self.layout(of: blocks)
        send = Mutex(SendState(selector: PageSelector(pageCounts: empty.map(\.pageCount), chunkPages: Self.chunkBytes / Self.pageSize)))
        statistics.withLock { $0.totalBytes = blocks.reduce(0) { $0 + $1.byteCount } }
    }

    public var stats: RAMStatistics { statistics.withLock { $0 } }

    /// The blocks as the configuration describes them: name, size, 4 KiB migration pages.
    public static func layout(of blocks: [RAMBlock]) -> [MigrationConfiguration.Block] {
        blocks.map { MigrationConfiguration.Block(name: $0.name, byteCount: $0.byteCount, pageSize: UInt32(pageSize)) }
    }

    // MARK: source

    /// Where pages go from now on: the main stream (with zero pages found as
    /// `detection` says), or the multifd channels.
    func use(_ newPath: PagePath) { path.withLock { $0 = newPath } }

    var multifd: MultifdSender? {
        if case .multifd(let sender, _) = path.withLock({ $0 }) { return sender }
        return nil
    }

    public func setup() throws(MigrationError) { try setup(continuing: false) }

    /// Starts tracking; the first sync then reports every page.  `continuing`
    /// (an incremental save): tracking kept on since the last save goes on, and
    /// the first sync reports only the pages written since.
    public func setup(continuing: Bool) throws(MigrationError) {
        guard let tracker else { throw .invalidState("RAM has no dirty-page source") }
        precondition(!continuing || trackingKeptOn, "only tracking kept on can be continued")
        // Counted as on before it starts: a start that fails half way (one slot
        // logging, the next refused) is stopped by `cleanup` all the same.
        send.withLock { $0.tracking = true }
        if !continuing {
            do {
                // Restarted, so that the first collection reports every page again.
                if trackingKeptOn { try tracker.stopTracking() }
                try tracker.startTracking()
            } catch { throw .state("cannot start dirty tracking: \(error)") }
        }
        // Every page, or (continuing) every page written since the last save.
        _ = try sync(hinting: false)
        var resident = residentChunks()
        try armTracking(&resident)
        send.withLock { $0.selector.resident = resident }
        // Hints only now: a page cleared by a hint before its tracking was re-armed,
        // and written in between, would reach neither the log nor the destination.
        freePageHints?.didSync(epoch: send.withLock { $0.syncEpoch }, ram: self)
    }

    /// After the first sync: the tracker may have left re-arming its tracking
    /// until pages are read (`prepareToRead`, from `pick`).  A page in a chunk
    /// that is not resident is picked as zero without being read, so its chunk
    /// is re-armed now, and asked about again: a write that came before the
    /// re-arm has made it resident by then, and one after is in the next sync.
    /// With free page hints everything is re-armed now (empty chunks asked about
    /// again all the same): a hinted page is never read, and a write after the
    /// hint must reach the dirty log.
    func armTracking(_ resident: inout [DirtyBitmap]) throws(MigrationError) {
        guard let tracker else { return }
        let chunkPages = Self.chunkBytes / Self.pageSize
        do {
            for (number, block) in blocks.enumerated() {
                if freePageHints != nil {
                    try tracker.prepareToRead(block: block.name, pages: 0..<resident[number].pageCount * chunkPages)
                }
                for run in resident[number].complement.runs {
                    let chunks = run.first..<run.first + run.count
                    if freePageHints == nil {
                        try tracker.prepareToRead(block: block.name, pages: chunks.lowerBound * chunkPages..<chunks.upperBound * chunkPages)
                    }
                    resident[number].formUnion(block.mapping.residentChunks(chunkBytes: Self.chunkBytes, among: chunks))
                }
            }
        } catch { throw .state("cannot re-arm dirty tracking: \(error)") }
    }

    /// The save completed and tracking is to go on for the next (incremental) one.
    func keepTrackingAfterCleanup() { send.withLock { $0.keepTracking = true } }

    public func cleanup() throws(MigrationError) {
        freePageHints?.finish()
        // Tracking kept on by an earlier save stops too, even if this migration
        // never got to set up (unless this one keeps it for the next save).
        let wasTracking = send.withLock { state in
            defer {
                state.tracking = false
                state.released = true
            }
            return !state.released && (state.tracking || trackingKeptOn) && !state.keepTracking
        }
        guard wasTracking, let tracker else { return }
        do { try tracker.stopTracking() } catch { throw .state("cannot stop dirty tracking: \(error)") }
    }

    /// Which chunks of each block held memory when tracking started (sent
    /// before the first page).
    public func residency() -> RAMResidency {
        RAMResidency(words: (send.withLock { $0.selector.resident } ?? residentChunks()).map(\.words))
    }

    func residentChunks() -> [DirtyBitmap] {
        blocks.map { $0.mapping.residentChunks(chunkBytes: Self.chunkBytes) }
    }

    /// Dirty pages not yet picked.
    var dirtyPageCount: Int { send.withLock { $0.selector.dirtyCount } }

    /// Dirty pages not yet picked, and pages picked but still queued on a channel.
    public func pendingEstimate() -> UInt64 {
        UInt64(send.withLock { $0.selector.dirtyCount } + (multifd?.queuedPages ?? 0)) * UInt64(Self.pageSize)
    }

    public func pendingExact() throws(MigrationError) -> UInt64 {
        _ = try sync()
        return pendingEstimate()
    }

    /// Collects the dirty log into the bitmaps; returns how many pages the guest
    /// dirtied since the previous sync.  With multifd, every channel then gets
    /// its `sync` barrier.
    /// `guestStopped`: the last sync before the switchover; free page hints end.
    /// `hinting` false: no round of hints starts after it (`setup` starts the
    /// first once tracking is re-armed).
    @discardableResult
    public func sync(guestStopped: Bool = false, hinting: Bool = true) throws(MigrationError) -> Int {
        guard let tracker else { throw .invalidState("RAM has no dirty-page source") }
        let collected: [String: DirtyBitmap]
        freePageHints?.willSync()
        // Stopped, the guest writes nothing more here: the last look skips re-arming the
        // log (KVM's clear), and a later collection (an incremental save's) sees these again.
        do { collected = try guestStopped ? tracker.peekDirtyPages() : tracker.collectDirtyPages() } catch {
            throw .state("cannot read the dirty log: \(error)")
        }
        let now = ContinuousClock.now
        let (dirtied, remaining, elapsed, epoch) = send.withLock { state -> (Int, Int, Duration, UInt64) in
            let dirtied = state.selector.merge(blocks.map { collected[$0.name] })
            state.syncEpoch += 1
            defer { state.lastSync = now }
            return (dirtied, state.selector.dirtyCount, now - state.lastSync, state.syncEpoch)
        }
        if guestStopped { freePageHints?.finish() } else if hinting { freePageHints?.didSync(epoch: epoch, ram: self) }
        try multifd?.sync()
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
        _ = try sync(guestStopped: true)
        while !(try sendDirtyPages(output, limit: .max, respectRateLimit: false)) {}
        try multifd?.finish()
    }

    /// A free page hint: clears `pages` of `block` where they are dirty and not
    /// yet sent, if no sync happened since sync `epoch` (the one the hint's round
    /// followed: a newer sync may hold writes made after the page was reported).
    /// Returns how many pages it cleared, so the dirty count stays exact.
    public func dropFreePages(block: Int, pages: Range<Int>, epoch: UInt64) -> Int {
        guard block >= 0, block < blocks.count else { return 0 }
        let cleared = send.withLock { state -> Int in
            guard state.tracking, !state.released, state.syncEpoch == epoch else { return 0 }
            return state.selector.clear(block: block, pages: pages)
        }
        if cleared > 0 {
            statistics.withLock { s in
                s.freePageHintPages += UInt64(cleared)
                s.remainingPages -= min(s.remainingPages, UInt64(cleared))
            }
        }
        return cleared
    }

    // MARK: source, postcopy

    /// Pages per background frame after the switch to postcopy: small, so a
    /// page request waits behind at most this much on the channel (128 KiB).
    static let postcopyJobPages = 32
    /// How long the thread that answers a request (the return path's reader with
    /// a preempt channel, else the migration thread) keeps asking the kernel to
    /// send the page (while it holds it unsent) before going on.
    static let urgentPushLimit: Duration = .milliseconds(5)
    /// The main socket's bound on unsent bytes after the switch to postcopy.
    static let postcopyUnsentBytes = 1 << 20
    /// With a preempt channel, the background leaves in trains of at most this much.
    static let postcopyBurstBytes = 16 << 10

    /// The switch to postcopy, guest stopped and the dirty log synced: the
    /// pages still dirty, which the destination drops and gets again.  On
    /// hugetlb every huge page with one dirty page is marked whole, since the
    /// destination places it whole.
    ///
    /// The chunks known resident stay known: the guest no longer runs here, so
    /// a chunk never resident is still all zero, and its pages go as zero pages
    /// without being read.  (Read, a never-touched huge page is allocated and
    /// cleared: half the postcopy thread's time in one profile, on a host whose
    /// fresh memory is slow.)
    func postcopyDiscard() -> PostcopyDiscard {
        let unitPages = blocks.map { $0.pageSize.byteCount / Self.pageSize }
        return send.withLock { state in
            state.selector.widen(unitPages: unitPages)
            statistics.withLock { $0.remainingPages = UInt64(state.selector.dirtyCount) }
            state.postcopyDiscard = state.selector.bitmaps
            return PostcopyDiscard(words: state.selector.bitmaps.map(\.words))
        }
    }

    /// Postcopy recovery: the destination's received bitmaps (one per block,
    /// QEMU's sense: a set bit is a page it has) make the pages it lacks the
    /// dirty set, which is sent again from the start.  A page it lacks must be
    /// one of the discard set (it had every other before the switch); a bitmap
    /// of the wrong size, or one that claims otherwise, is refused.  On hugetlb
    /// a huge page it lacks in part is sent whole.
    func resumePostcopy(received: [[UInt64]]) throws(MigrationError) {
        let unitPages = blocks.map { $0.pageSize.byteCount / Self.pageSize }
        try send.withLock { state throws(MigrationError) in
            guard let discard = state.postcopyDiscard else { throw .invalidState("a postcopy recovery before the switch to postcopy") }
            var lacking: [DirtyBitmap] = []
            for (index, words) in received.enumerated() {
                let pageCount = discard[index].pageCount
                guard words.count == discard[index].words.count else {
                    throw .stream(.malformed("the received bitmap of RAM block '\(layout[index].name)' has \(words.count) words; the block needs \(discard[index].words.count)"))
                }
                let missing = DirtyBitmap(words: words.map { ~$0 }, pageCount: pageCount)
                for (at, word) in missing.words.enumerated() where word & ~discard[index].words[at] != 0 {
                    let page = at * 64 + (word & ~discard[index].words[at]).trailingZeroBitCount
                    throw .stream(.malformed("the destination says it lacks page \(page) of RAM block '\(layout[index].name)', which it had before the switch to postcopy"))
                }
                lacking.append(missing)
            }
            state.selector.replace(with: lacking)
            state.selector.widen(unitPages: unitPages)
            statistics.withLock { $0.remainingPages = UInt64(state.selector.dirtyCount) }
        }
    }

    /// After the switch: every dirty page, requested pages first
    /// (`PostcopyPicker`'s rules).  With a preempt channel (`urgent`) the
    /// return path's reader sends a request's pages there as it reads the
    /// request, while this thread sends the background.  Without one, this
    /// thread looks at the queued requests before each background frame, each
    /// short, so a request waits behind at most one frame (plus what the socket
    /// holds).
    /// Returns once no page is dirty; a request after that names pages sent already.
    /// `betweenFrames` runs on this thread before each background frame and
    /// each look at the requests, at least every 10 ms (the background's pace
    /// follows it); what it returns, when not nil, shortens how long the
    /// background then waits for room in its socket before it runs again.
    /// With a preempt channel the background leaves in trains of `trainBytes`,
    /// and `afterUrgent` runs on the return path's reader after each request's
    /// pages went to the preempt channel.
    func sendPostcopy(_ output: StreamWriter, urgent: StreamWriter?, requests: PostcopyRequests,
                      trainBytes: Int = postcopyBurstBytes, afterUrgent: @escaping @Sendable () -> Void = {},
                      betweenFrames: () -> Duration? = { nil }) throws(MigrationError) {
        let unitPages = blocks.map { $0.pageSize.byteCount / Self.pageSize }
        send.withLock { $0.picker = PostcopyPicker(unitPages: unitPages, preempt: urgent != nil) }
        // The background never blocks in a long write while a request waits: the main
        // socket holds at most about a megabyte unsent (8 ms at 1 Gbit/s; without a preempt
        // channel, what a request's pages queue behind), and a background frame is written
        // only once it has room, requests being served meanwhile.
        output.channel.limitUnsent(Self.postcopyUnsentBytes)
        // With a preempt channel, a requested page shares the link's bottleneck with the
        // background, paced under the link's rate: the background leaves in 16 KiB trains,
        // which a shaped link's queue passes at once, not in the 64 KiB ones TCP builds on
        // a short round trip, each of which a requested page can wait behind (measured at
        // 1 Gbit/s behind a 32 KB tbf bucket, four runs each, alternating: request p99
        // 0.38-1.12 ms, median 0.60, against 0.79-3.27 ms, median 1.47).  With huge pages,
        // shorter ones while the background yields (`PostcopyHugePageYield.trainBytes`).
        if urgent != nil { output.channel.limitBursts(trainBytes) }
        defer { output.channel.limitBursts(nil) }
        // A request queued while this thread waits for room wakes it: it waits on the
        // socket and the requests' doorbell together (a poll that ended every millisecond
        // instead made a request wait 1 ms at the median).  Without a doorbell it looks
        // at the requests every millisecond.  The 10 ms bound is how long the wait may
        // hold off a `shutdown` of the channel.
        let doorbell = output.channel.makeDoorbell()
        requests.ringOnArrival(doorbell)
        defer { requests.ringOnArrival(nil) }
        // With a preempt channel, the return path's reader sends a request's pages as
        // it reads the request; this thread sends the background.
        do throws(MigrationError) {
            if let urgent {
                try requests.serveOnArrival { [self] request throws(MigrationError) in
                    try serve(request, on: urgent, requests: requests)
                    afterUrgent()
                }
            }
            try sendBackground(output, requests: requests, doorbell: doorbell, betweenFrames: betweenFrames)
            // A request whose sending failed after the background's last look took its
            // pages from the dirty set: the migration must not end as if they were sent.
            if let failure = requests.stopServing() { throw failure }
        } catch {
            // The pause that follows closes both channels.  The preempt one is shut now,
            // so a request being served into a stalled socket gives up (its failure, a
            // consequence, not recorded) and this does not wait for it.
            requests.abandonServing { urgent?.channel.shutdown() }
            throw error
        }
    }

    /// Postcopy's background until no page is dirty, with the requests queued
    /// (no preempt channel) before each frame.
    private func sendBackground(_ output: StreamWriter, requests: PostcopyRequests,
                                doorbell: (any ChannelDoorbell)?, betweenFrames: () -> Duration?) throws(MigrationError) {
        var background = PageSender(writer: output, mappings: mappings, detection: .multifd, statistics: statistics)
        let longest: Duration = doorbell == nil ? .milliseconds(1) : .milliseconds(10)
        while true {
            let wait = min(longest, betweenFrames() ?? longest)
            while let request = try requests.take() {
                switch pick(request) {
                case .send(let job, _): try background.send(job)
                case .dropped: requests.dropped()
                case .nothing, .resend: break     // `resend` only with a preempt channel
                }
            }
            let writable: Bool
            do { writable = try output.channel.waitWritable(timeout: wait, orRung: doorbell) } catch { throw .channel(error) }
            guard writable else { continue }        // look at the requests again
            let next = send.withLock { state in
                defer { statistics.withLock { $0.remainingPages = UInt64(state.selector.dirtyCount) } }
                return state.picker.background(Self.postcopyJobPages, from: &state.selector)
            }
            guard let job = next else { return }
            try background.send(job)
            // `max-postcopy-bandwidth` holds back the background, never a request.
            while output.isRateLimited && requests.isEmpty {
                if let doorbell { _ = doorbell.wait(timeout: .milliseconds(1)) } else { sleepUntil(.now + .milliseconds(1)) }
                output.limiter.renewIfDue()
                _ = betweenFrames()     // the pace follows the preempt channel meanwhile too
            }
        }
    }

    /// What of `request` goes, and where (`PostcopyPicker`).
    private func pick(_ request: PostcopyRequests.Request) -> PostcopyPicker.RequestPick {
        send.withLock { state in
            defer { statistics.withLock { $0.remainingPages = UInt64(state.selector.dirtyCount) } }
            return state.picker.request(block: request.block, pages: request.pages, from: &state.selector)
        }
    }

    /// Serves one request on the preempt channel `urgent`, on the calling thread
    /// (the return path's reader; the migration thread meanwhile sends the background).
    private func serve(_ request: PostcopyRequests.Request, on urgent: StreamWriter,
                       requests: PostcopyRequests) throws(MigrationError) {
        let picked = pick(request)
        switch picked {
        case .send(let job, _), .resend(let job):
            var sender = PageSender(writer: urgent, mappings: mappings, detection: .multifd, statistics: statistics)
            try sender.send(job)
            // A faulting vCPU waits for it: it must leave now, not when TCP next tries.
            urgent.channel.pushUnsent(within: Self.urgentPushLimit)
            if case .resend = picked {
                requests.served(urgentPages: job.count, resent: true)
            } else {
                requests.served(urgentPages: job.count)
            }
        case .dropped:
            requests.dropped()
        case .nothing:
            break
        }
    }

    public func load(_ section: StateSection) throws(MigrationError) {
        throw .stream(.unexpectedFrame("RAM travels in page frames, not a section"))
    }

    /// Sends dirty pages from the cursor until `limit` bytes went out, the rate
    /// limit's window is spent, or no dirty page is left (`true`).
    func sendDirtyPages(_ output: StreamWriter, limit: Int, respectRateLimit: Bool) throws(MigrationError) -> Bool {
        switch path.withLock({ $0 }) {
        case .inline(let detection):
            var sender = PageSender(writer: output, mappings: mappings, detection: detection, statistics: statistics)
            return try pump(Self.jobPages, limit: limit, respectRateLimit: respectRateLimit, limiter: output.limiter, findZero: false) {
                job throws(MigrationError) in try sender.send(job)
            }
        case .multifd(let channels, let detection):
            return try pump(channels.jobPages, limit: limit, respectRateLimit: respectRateLimit, limiter: output.limiter,
                            findZero: detection == .legacy) { job throws(MigrationError) in try channels.send(job) }
        }
    }

    private func pump(_ jobPages: Int, limit: Int, respectRateLimit: Bool, limiter: RateLimiter, findZero: Bool,
                      _ deliver: (PageJob) throws(MigrationError) -> Void) throws(MigrationError) -> Bool {
        let start = limiter.totalBytes
        var looked = 0
        while let job = try pick(jobPages, findZero: findZero) {
            try deliver(job)
            looked += job.count
            let done = send.withLock { $0.selector.dirtyCount == 0 }
            if limiter.totalBytes - start >= UInt64(limit) { return done }
            if respectRateLimit && (limiter.isLimited || looked >= Self.iterationPages) { return done }
        }
        return true
    }

    /// Takes up to `count` dirty pages from the cursor on (`PageSelector.next`),
    /// has the tracker re-arm them before anything reads them, and with
    /// `findZero` (QEMU's `legacy` detection) reads each for zero here.
    func pick(_ count: Int, findZero: Bool) throws(MigrationError) -> PageJob? {
        let picked = send.withLock { state -> PageJob? in
            let job = state.selector.next(count)
            let remaining = state.selector.dirtyCount
            statistics.withLock { $0.remainingPages = UInt64(remaining) }
            return job
        }
        guard var job = picked else { return nil }
        try prepareToRead(job)
        if findZero {
            for i in 0..<job.count where !job.knownZero[i] {
                job.knownZero[i] = mappings[job.blocks[i]].isZeroPage(at: job.offsets[i])
            }
        }
        return job
    }

    /// The tracker re-arms the spans the job's pages cover (`DirtyPageSource.prepareToRead`):
    /// one per stretch of ascending pages of a block (a job that wraps round starts another).
    private func prepareToRead(_ job: PageJob) throws(MigrationError) {
        guard let tracker, job.count > 0 else { return }
        var spans: [(block: Int, pages: Range<Int>)] = []
        for i in 0..<job.count {
            let (block, page) = (job.blocks[i], job.offsets[i] / Self.pageSize)
            if let last = spans.last, last.block == block, page >= last.pages.upperBound {
                spans[spans.count - 1].pages = last.pages.lowerBound..<page + 1
            } else {
                spans.append((block, page..<page + 1))
            }
        }
        do {
            for span in spans { try tracker.prepareToRead(block: blocks[span.block].name, pages: span.pages) }
        } catch { throw .state("cannot re-arm dirty tracking: \(error)") }
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
            guard allocateAhead else { return }
            state.populators = zip(blocks, residency.words).map { block, words in
                let chunks = DirtyBitmap(words: words, pageCount: RAMResidency.chunkCount(byteCount: block.byteCount))
                return ChunkPopulator.start(mapping: block.mapping, chunks: chunks, chunkBytes: Self.chunkBytes)
            }
        }
    }

    /// Applies one `pages` frame whose index `reader` just returned: the index
    /// is checked against the layout, then the tail is read straight into the
    /// pages it names, and each page is checked against its checksum.  Several
    /// channels may load at once (they never hold the same page in one epoch).
    ///
    /// A page whose bytes do not match is kept as suspect, not refused: the
    /// guest may have written it while it was being sent, and then the dirty
    /// log sends it again.  `verifyIntact` refuses the load if any is left.
    public func loadPages(_ header: FrameHeader, payload: [UInt8], from reader: inout FrameReader,
                          scratch: inout PageLoadScratch) throws(MigrationError) {
        let index: PageIndex
        do { index = try PageIndex(decoding: payload, tailLength: header.tailLength, layout: layout) } catch { throw .stream(error) }
        if let postcopy = load.withLock({ $0.postcopy }) {
            return try loadPostcopyPages(index, from: &reader, scratch: &scratch, into: postcopy)
        }
        let pageSize = Self.pageSize
        if index.compressed {
            try scratch.decompress(from: &reader, into: index.dataByteCount)
            var position = 0
            for record in index.records where record.kind == .data {
                mappings[record.block].storePage(scratch.pages, range: position..<position + pageSize, at: Int(record.offset))
                position += pageSize
            }
        }
        // The data pages as runs adjacent in one block (a frame is usually one run):
        // the mapping is looked up, and retained, once a run rather than once a page,
        // where the channels' threads would contend for its reference count.
        let runs = DataRuns(index.records, pageSize: pageSize)
        if !index.compressed, index.dataByteCount > 0 {
            scratch.list.removeAll()
            for run in runs.runs { scratch.list.append(mappings[run.block], offset: run.offset, count: run.pages * pageSize) }
            try reader.readTail(into: scratch.list)
        }
        // Each page as it now is in RAM against the checksum the source computed.
        var intact: [Bool] = []
        swap(&intact, &scratch.intact)      // its storage, unshared: kept from frame to frame
        intact.removeAll(keepingCapacity: true)
        var position = 0
        for run in runs.runs {
            mappings[run.block].withSpan(at: run.offset, count: run.pages * pageSize) { span in
                for page in 0..<run.pages {
                    let sum = FrameChecksum.of(span.extracting(page * pageSize..<(page + 1) * pageSize))
                    intact.append(sum == runs.checksums[position])
                    position += 1
                }
            }
        }
        scratch.intact = intact
        var normal = 0, zero = 0
        let startsZero = destinationStartsZero
        load.withLock { state in
            state.pagesLoaded = true
            var nextData = 0
            var last = (block: -1, offset: 0)
            for record in index.records {
                let page = Int(record.offset) / pageSize
                var good = true
                if record.kind == .data {
                    if startsZero { state.loaded[record.block][page] = true }
                    good = intact[nextData]
                    nextData += 1
                    normal += 1
                } else {
                    // A page never loaded into memory that started zero is zero already.
                    if !startsZero || state.loaded[record.block][page] { mappings[record.block].zeroPage(at: Int(record.offset)) }
                    zero += 1
                }
                if state.suspect[record.block][page] != !good {
                    state.suspect[record.block][page] = !good
                    state.suspectCount += good ? -1 : 1
                }
                last = (record.block, Int(record.offset))
            }
            if last.block >= 0 && last.block < state.populators.count {
                state.populators[last.block].writerReached(offset: last.offset)
            }
        }
        statistics.withLock { s in
            s.normalPages += UInt64(normal)
            s.zeroPages += UInt64(zero)
        }
    }

    // MARK: destination, postcopy

    /// Whether the switch to postcopy was made (and the load not yet over).
    var inPostcopy: Bool { load.withLock { $0.postcopy != nil } }

    /// A postcopy load that completed lets go of its placement.
    func endPostcopy() { load.withLock { $0.postcopy = nil } }

    /// The switch to postcopy (`payload`: the discard set): the helpers stop,
    /// a page that arrived corrupt must be one the source sends again, the
    /// discarded pages are freed and RAM is registered for missing-page
    /// faults, and the fault thread starts.  The guest may run once this returns.
    func beginPostcopy(_ payload: [UInt8], placement: any PagePlacement, vcpuThreads: [Int32]? = nil,
                       ask: @escaping @Sendable (_ block: Int, _ offset: Int, _ length: Int) -> Void,
                       onFailure: @escaping @Sendable (MigrationError) -> Void) throws(MigrationError) -> PostcopyLoad {
        let discard: PostcopyDiscard
        do { discard = try PostcopyDiscard(decoding: payload, layout: layout) } catch { throw .stream(error) }
        guard placement.unitBytes == blocks.map(\.pageSize.byteCount) else {
            throw .invalidState("the page placement's units do not match the RAM blocks' page sizes")
        }
        endLoad()
        // A page that arrived corrupt (written while in flight) comes again only if it is discarded.
        try load.withLock { (state: inout LoadState) throws(MigrationError) in
            guard state.postcopy == nil else { throw .stream(.unexpectedFrame("a second postcopy switch")) }
            for block in state.suspect.indices {
                let stale = DirtyBitmap(words: discard.words[block], pageCount: state.suspect[block].pageCount)
                for page in state.suspect[block].setPages where stale[page] {
                    state.suspect[block][page] = false
                    state.suspectCount -= 1
                }
            }
        }
        try verifyIntact()
        let postcopy = try PostcopyLoad(discard: discard, layout: layout, placement: placement, vcpuThreads: vcpuThreads,
                                        ask: ask, onFailure: onFailure)
        load.withLock { $0.postcopy = postcopy }
        postcopy.start()
        return postcopy
    }

    /// One `pages` frame after the switch: the tail into a buffer, each page
    /// checked (the source's guest is stopped, so a mismatch is corruption,
    /// never a page in flight), then placed.
    private func loadPostcopyPages(_ index: PageIndex, from reader: inout FrameReader, scratch: inout PageLoadScratch,
                                   into postcopy: PostcopyLoad) throws(MigrationError) {
        if index.compressed {
            try scratch.decompress(from: &reader, into: index.dataByteCount)
        } else {
            try reader.readTail(into: &scratch.pages)
        }
        var position = 0, normal = 0, zero = 0
        for record in index.records {
            guard record.kind == .data else {
                zero += 1
                continue
            }
            guard FrameChecksum.of(scratch.pages[position..<position + Self.pageSize]) == record.checksum else {
                throw .stream(.malformed("the page at offset \(record.offset) of RAM block '\(layout[record.block].name)' arrived corrupt in postcopy"))
            }
            position += Self.pageSize
            normal += 1
        }
        try postcopy.place(index.records, data: scratch.pages, loader: scratch.loader)
        statistics.withLock { s in
            s.normalPages += UInt64(normal)
            s.zeroPages += UInt64(zero)
        }
    }

    /// Refuses a load that left a page whose last copy did not match its checksum.
    public func verifyIntact() throws(MigrationError) {
        let first = load.withLock { state -> (Int, Int, Int)? in
            guard state.suspectCount > 0 else { return nil }
            for (block, bitmap) in state.suspect.enumerated() {
                if let page = bitmap.nextSetPage(from: 0) { return (state.suspectCount, block, page) }
            }
            return nil
        }
        guard let (count, block, page) = first else { return }
        throw .stream(.incomplete("\(count) page(s) arrived corrupt and were not sent again (the first: offset \(page * Self.pageSize) of RAM block '\(layout[block].name)')"))
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

/// One loading thread's reusable buffers.
/// A frame's data records as runs of pages adjacent in one block, in the
/// order of the frame's tail, with each page's checksum in that order.
struct DataRuns {
    private(set) var runs: [PageRun] = []
    private(set) var checksums: [UInt64] = []

    init(_ records: [PageRecord], pageSize: Int) {
        checksums.reserveCapacity(records.count)
        for record in records where record.kind == .data {
            checksums.append(record.checksum)
            runs.appendPage(block: record.block, offset: Int(record.offset), pageSize: pageSize)
        }
    }
}

public struct PageLoadScratch: ~Copyable {
    /// Which loading thread this is (postcopy keeps a huge page to one): 0 the main channel's.
    var loader = 0
    var list = ScatterList()
    var intact: [Bool] = []
    var compressed: [UInt8] = []
    var pages: [UInt8] = []
    var decompressor: ZstdDecompressor?

    public init() {}

    /// Reads a compressed tail and decompresses it into `pages`: exactly
    /// `count` bytes, or an error (a lying size, a bomb, corruption), never more.
    mutating func decompress(from reader: inout FrameReader, into count: Int) throws(MigrationError) {
        try reader.readTail(into: &compressed)
        do {
            if decompressor == nil { decompressor = try ZstdDecompressor() }
            let input = compressed
            try decompressor!.decompress(input.span, expectedSize: count, into: &pages)
        } catch { throw .stream(.malformed("compressed pages: \(error)")) }
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
    /// Zero-copy flushes whose sends the kernel copied after all.
    public var dirtySyncMissedZeroCopy: UInt64 = 0
    /// Dirty pages free page hints took out before they were sent.
    public var freePageHintPages: UInt64 = 0
    public var pageSize: UInt64 { UInt64(RAMMigration.pageSize) }
}
