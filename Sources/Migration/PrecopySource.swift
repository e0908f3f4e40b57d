import MigrationProtocol
import Synchronization

/// The source side of a precopy migration, run on its own thread:
///
///     setup ──▶ active ──(pending ≤ threshold, exactly)──▶ device ──▶ completed
///       │          │                                         │
///       └──────────┴────────── error / cancel ───────────────┴──▶ failed / cancelled
///
/// `active` sends dirty RAM while the guest runs.  Every 100 ms it measures
/// the bandwidth and turns `downtime-limit` into a byte threshold.  When the
/// cheap estimate of what is pending falls under it, the exact size is asked
/// (RAM syncs the dirty log); under the threshold still, the guest is stopped,
/// the rest goes out with every device's state, and the destination's answer
/// on the return path completes the migration.
///
/// Failure or cancellation before the point of no return resumes the source
/// guest as it was.  The point of no return is the `end` frame: once it may
/// have reached the destination, the destination may run the guest, so the
/// source never resumes on its own.  A cancel is then ignored; the
/// destination's answer settles the outcome: "loaded" completes the migration,
/// a refusal resumes the source, and no answer leaves the source paused and
/// the migration failed with a reason that says so.  (QEMU resumes the source
/// on any precopy failure and so can leave two guests running.)
public final class PrecopySource: Sendable {
    public struct Dependencies: Sendable {
        public let opener: any ChannelOpener
        public let configuration: MigrationConfiguration
        public let ram: RAMMigration
        public let devices: [any Migratable]
        public let vm: any MigrationVMControl
        /// Set for a save into a mapped-ram file: `opener` then opens a `PageFile`.
        public let mappedRAM: MappedRAMSettings?
        /// Set for a background snapshot (`background-snapshot`): RAM's write protection.
        public let writeProtection: (any WriteProtection)?
        /// `opener` connects on the migration thread (setup), not the caller's.
        public init(opener: any ChannelOpener, configuration: MigrationConfiguration, ram: RAMMigration,
                    devices: [any Migratable], vm: any MigrationVMControl, mappedRAM: MappedRAMSettings? = nil,
                    writeProtection: (any WriteProtection)? = nil) {
            (self.opener, self.configuration, self.ram, self.devices, self.vm) = (opener, configuration, ram, devices, vm)
            self.mappedRAM = mappedRAM
            self.writeProtection = writeProtection
        }
        public init(channel: any ByteChannel, configuration: MigrationConfiguration, ram: RAMMigration,
                    devices: [any Migratable], vm: any MigrationVMControl) {
            self.init(opener: OpenChannel(channel), configuration: configuration, ram: ram, devices: devices, vm: vm)
        }
    }

    /// Where the switchover stands, for cancel and for live parameters.
    enum Phase: Equatable {
        /// The guest runs (or was stopped by its user): rate-limited, cancellable.
        case live
        /// The guest is stopped for the switchover: no rate limit; still cancellable.
        case switchingOver
        /// The `end` frame is being written: cancel is ignored.  If the write fails,
        /// the destination cannot have the whole frame, so the source may resume.
        case sendingEnd
        /// The `end` frame is out: the destination may run the guest, so nothing
        /// here may resume it unless the destination says it refused.
        case pastPointOfNoReturn

        /// Whether `migrate_cancel` may still stop the migration.
        var cancellable: Bool { self == .live || self == .switchingOver }

        /// The transitions `run` makes; anything else is a bug.
        func next(_ to: Phase) -> Phase {
            switch (self, to) {
            case (.live, .switchingOver), (.switchingOver, .live), (.switchingOver, .sendingEnd), (.sendingEnd, .pastPointOfNoReturn):
                return to
            case (.live, _), (.switchingOver, _), (.sendingEnd, _), (.pastPointOfNoReturn, _):
                preconditionFailure("switchover phase \(self) cannot become \(to)")
            }
        }
    }

    struct Progress {
        var info = MigrationInfo()
        var cancelRequested = false
        var phase = Phase.live
        /// What `cleanup` could not release, if anything.
        var cleanupFailure: String?
        var startedAt = ContinuousClock.now
        var endedAt: ContinuousClock.Instant?
        /// A mapped-ram save's outcome, once complete.
        var mappedRAM: MappedRAMOutcome?
        /// `migrate-start-postcopy` was asked: the next round of the live phase switches.
        var postcopyRequested = false
        /// The switch to postcopy was made: the stream's bytes at that moment.
        var postcopyStart: UInt64?
        /// The last live windows that sent something, for postcopy's pace (`PostcopyPacing`);
        /// emptied when postcopy pauses (a recovery may take another path).
        var recentWindows: [PostcopyPacing.Window] = []
        /// The background's pace in postcopy, less the requested pages' share; nil when
        /// it is not paced from the link's estimate.
        var backgroundPace: PostcopyBackgroundPace?
        /// With huge pages, the background stepping aside while a requested page is in flight.
        var hugePageYield: PostcopyHugePageYield?
        /// Yields counted before the last `applyPostcopyPacing` (a recovery starts a new count).
        var earlierYields: UInt64 = 0
        /// What main channels broken in postcopy carried (a recovery opens a new one).
        var earlierMain: (bytes: UInt64, frames: UInt64) = (0, 0)
        /// Times postcopy paused (its connection broke, or `migrate-pause`).
        var postcopyPauses: UInt64 = 0
    }

    let parts: Dependencies
    /// The main channel and its writer; a postcopy recovery replaces them.
    let connection: Mutex<(channel: PendingChannel, writer: StreamWriter)>
    var channel: PendingChannel { connection.withLock { $0.channel } }
    var writer: StreamWriter { connection.withLock { $0.writer } }
    /// Names this migration on every channel it opens (a recovered one included).
    let migrationID = (0..<ChannelIdentity.idByteCount).map { _ in UInt8.random(in: 0...255) }
    /// A paused postcopy's way back (`migrate` with `resume: true`).
    let recovery = RecoveryWait<any ChannelOpener>(close: { $0.cancel() }, interrupt: { $0.cancel() })
    /// Shared by every channel: `max-bandwidth` holds for their sum.
    let limiter = RateLimiter()
    /// The multifd connections, once opening starts (so a cancel can shut them).
    let multifdChannels = Mutex<[PendingChannel]>([])
    /// The `postcopy-preempt` channel (capability `postcopy-preempt`), once opened.
    let preempt = Mutex<(channel: PendingChannel, writer: StreamWriter)?>(nil)
    /// The reader of the page requests that come back on the preempt channel, once it is open.
    let preemptRequests = Mutex<ReturnPathReader?>(nil)
    /// With postcopy-preempt: the main channel's delivery, sampled from the live phase to the switch.
    let linkSampler = Mutex<LinkRateSampler?>(nil)
    /// `migrate-set-parameters` applies to a running migration, as in QEMU.
    let parameterStorage: Mutex<MigrationParameters>
    public let capabilities: MigrationCapabilities
    let onStatus: @Sendable (MigrationStatus) -> Void
    let onPass: @Sendable (UInt64) -> Void
    let progress = Mutex(Progress())
    /// Held across every status change and its MIGRATION event, so events go
    /// out in the order of the changes, whichever thread makes them (QMP's
    /// `migrate_cancel` and `migrate resume` beside the migration thread);
    /// true once `setup` has been announced.  Taken before `progress`.
    let statusEvents = Mutex(false)
    /// Reads the destination's messages once the channel is open (sockets only).
    let returnPath = Mutex<ReturnPathReader?>(nil)
    /// A mapped-ram save's file side, once set up.
    let saver = Mutex<MappedRAMSaver?>(nil)
    /// A background snapshot's figures, once it started.
    let snapshot = Mutex<SnapshotProgress?>(nil)
    /// The destination's page requests (postcopy), from the return-path reader.
    let requests: PostcopyRequests
    static let window: Duration = .milliseconds(100)
    static let returnPathTimeout: Duration = .seconds(60)
    /// Under the threshold, a stop expected to take this long or less happens at once.
    static let quickSwitchover: Duration = .milliseconds(10)
    static let maximumConvergingPasses = 8

    public init(_ parts: Dependencies, parameters: MigrationParameters, capabilities: MigrationCapabilities,
                onStatus: @escaping @Sendable (MigrationStatus) -> Void, onPass: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        self.parts = parts
        let channel = PendingChannel(parts.opener)
        connection = Mutex((channel, StreamWriter(channel: channel, limiter: limiter)))
        self.parameterStorage = Mutex(parameters)
        self.capabilities = capabilities
        self.onStatus = onStatus
        self.onPass = onPass
        requests = PostcopyRequests(layout: parts.ram.layout, unitBytes: parts.ram.blocks.map(\.pageSize.byteCount))
        // In setup from the moment `migrate` returns, as in QEMU (the connect may take a while).
        progress.withLock { $0.info.status = .setup }
    }

    /// The state for `query-migrate`.
    public var info: MigrationInfo {
        var (info, started, ended) = progress.withLock { ($0.info, $0.startedAt, $0.endedAt) }
        info.totalTime = Self.milliseconds((ended ?? .now) - started)
        info.ram = parts.ram.stats
        info.transferredBytes = limiter.totalBytes
        var main = ChannelStatistics(role: .main, index: 0)
        let earlier = progress.withLock { $0.earlierMain }
        (main.bytes, main.frames) = (earlier.bytes + writer.bytesWritten, earlier.frames + writer.framesWritten)
        let multifd = parts.ram.multifd?.channelStatistics ?? []
        var urgent: [ChannelStatistics] = []
        if let (_, writer) = preempt.withLock({ $0 }) {
            var channel = ChannelStatistics(role: .postcopyPreempt, index: 0)
            (channel.bytes, channel.frames) = (writer.bytesWritten, writer.framesWritten)
            urgent = [channel]
        }
        info.channels = [main] + multifd + urgent
        info.multifdBytes = multifd.reduce(0) { $0 + $1.bytes }
        info.mappedRAM = progress.withLock { $0.mappedRAM }
        info.snapshot = snapshot.withLock { $0?.statistics }
        info.postcopyRequests = requests.received
        (info.postcopyDroppedRequests, info.postcopyUrgentPages, info.postcopyResentPages) = requests.counts
        if let start = progress.withLock({ $0.postcopyStart }) { info.postcopyBytes = limiter.totalBytes - start }
        info.postcopyPauses = progress.withLock { $0.postcopyPauses }
        // While paused or recovering, why (QEMU's source shows the error that paused it).
        if [.postcopyPaused, .postcopyRecoverSetup, .postcopyRecover].contains(info.status), let reason = recovery.reason {
            info.errorDescription = "postcopy paused (\(reason)): the guest runs on the destination, where its newest memory is, "
                + "so it stays stopped here; after 'migrate-recover' there, 'migrate' with \"resume\": true reconnects"
        }
        return info
    }

    public var status: MigrationStatus { progress.withLock { $0.info.status } }

    /// A completed mapped-ram save: the file and generation it wrote.
    public var mappedRAMOutcome: MappedRAMOutcome? { progress.withLock { $0.mappedRAM } }

    /// A completed mapped-ram save that left dirty tracking on (`x-ferry-incremental`):
    /// the next save into the same file may continue it.
    public var keptTrackingBaseline: MappedRAMBaseline? {
        guard parts.mappedRAM?.keepTracking == true, status == .completed else { return nil }
        return mappedRAMOutcome?.baseline
    }

    var parameters: MigrationParameters { parameterStorage.withLock { $0 } }

    /// New parameters for this migration, in force at once: the bandwidth limit
    /// for the next window, the downtime limit and switchover bandwidth at the
    /// next threshold, the throttle settings at the next step.
    public func update(_ parameters: MigrationParameters) {
        parameterStorage.withLock { $0 = parameters }
        // Under the progress lock, so a switchover starting now cannot be limited by it.
        // In postcopy `max-postcopy-bandwidth` holds instead, at once (as in QEMU).
        let postcopy = progress.withLock { p -> Bool in
            if p.phase == .live { writer.setRateLimit(parameters.maxBandwidth) }
            if p.postcopyStart != nil { writer.setRateLimit(parameters.maxPostcopyBandwidth) }
            return p.postcopyStart != nil
        }
        if postcopy { applyPostcopyPacing() }
    }

    /// Asks a running migration to stop; the source guest keeps (or resumes)
    /// running.  Past the point of no return the request is ignored: the
    /// destination may already run the guest, and its answer decides.
    public func cancel() {
        let changed = statusEvents.withLock { announced -> Bool in
            let changed = progress.withLock { p -> Bool in
                guard !p.info.status.isFinished, p.info.status != .cancelling, p.phase.cancellable else { return false }
                p.cancelRequested = true
                p.info.status = .cancelling
                return true
            }
            guard changed else { return false }
            // Cancelled before the migration thread announced `setup`: it comes first all the same.
            if !announced { onStatus(.setup) }
            announced = true
            onStatus(.cancelling)
            return true
        }
        guard changed else { return }
        channel.shutdown()      // before the connect is done, this abandons it
        for extra in multifdChannels.withLock({ $0 }) { extra.shutdown() }
        preempt.withLock { $0 }?.channel.shutdown()
    }

    /// Runs the whole migration; returns when it has completed, failed or been cancelled.
    public func run() {
        progress.withLock { $0.startedAt = .now }
        statusEvents.withLock { announced in
            if !announced && status == .setup { onStatus(.setup) }
            announced = true
        }
        var stoppedGuest: Bool?      // non-nil once the guest was stopped: whether it had been running
        var throttle = 0             // auto-converge's level: it only rises during one migration
        do throws(MigrationError) {
            if let name = Self.duplicateSectionName(parts.devices) {
                throw MigrationError.invalidState("two pieces of state claim section '\(name)'")
            }
            do { try channel.open() } catch { throw MigrationError.channel(error) }
            startReturnPath()
            try checkCancelled()
            let start = parameters      // the multifd settings hold for this whole migration, as in QEMU
            // Mapped-ram: the file, continued or started afresh, before RAM tracking starts.
            let fileSave = try parts.mappedRAM.map { settings throws(MigrationError) in try prepareMappedRAM(settings) }
            writer.setRateLimit(start.maxBandwidth)
            try writer.sendStreamHeader(ChannelIdentity(role: .main, migrationID: migrationID))
            try writer.send(.configuration, payload: parts.configuration.encode())
            if capabilities.backgroundSnapshot {
                try runBackgroundSnapshot(stoppedGuest: &stoppedGuest)
                endTracking()       // the guest runs on, as it ran before
                progress.withLock { p in p.info.errorDescription = p.cleanupFailure.map { "completed, but \($0)" } }
                finish(.completed)
                closeChannels()
                return
            }
            try parts.ram.setup(continuing: fileSave?.continued ?? false)
            if let fileSave {
                // The pages go to the file's page areas; the stream here is the device state.
                try writer.send(.channels, payload: ChannelPlan(multifd: UInt16(fileSave.barrier.parties), mappedRAM: true).encode())
                startFileWorkers(fileSave, start)
            } else if capabilities.multifd {
                try writer.send(.residency, payload: parts.ram.residency().encode())
                try openMultifd(start, migrationID: migrationID)
            } else {
                try writer.send(.residency, payload: parts.ram.residency().encode())
                let preempting = capabilities.postcopyRAM && capabilities.postcopyPreempt
                try writer.send(.channels, payload: ChannelPlan(multifd: 0, preempt: preempting, preemptRequests: preempting).encode())
                if preempting { try openPreempt(migrationID: migrationID) }
                parts.ram.use(.inline(start.zeroPageDetection))
            }
            for device in parts.devices { try device.setup() }
            progress.withLock { $0.info.setupTime = Self.milliseconds(.now - $0.startedAt) }
            try checkCancelled()
            setStatus(.active)
            if preempt.withLock({ $0 }) != nil { linkSampler.withLock { $0 = LinkRateSampler(channel) } }
            defer { stopLinkSampler() }
            while true {
                let outcome = try iterateUntilThresholdMet(throttle: &throttle)
                // Downtime counts from the stop request, as QEMU counts it: a throttled
                // vCPU may sleep out its share before it parks.
                let stopRequested = ContinuousClock.now
                progress.withLock { p in
                    p.phase = p.phase.next(.switchingOver)
                    writer.setRateLimit(0)          // the switchover is not rate-limited, as in QEMU
                }
                let wasRunning = parts.vm.stopForSwitchover()
                stoppedGuest = wasRunning
                guard case .switchover(let threshold) = outcome else {
                    linkSampler.withLock { $0 }?.finish()       // what it saw is the pace's (joined at the end)
                    try runPostcopy(stopRequested: stopRequested)
                    break
                }
                if try switchover(threshold: threshold, stopRequested: stopRequested) { break }
                // The exact device state broke the limit: the guest runs on, and so do we.
                parts.vm.resumeAfterFailedSwitchover(wasRunning: wasRunning)
                stoppedGuest = nil
                progress.withLock { p in
                    p.phase = p.phase.next(.live)
                    writer.setRateLimit(parameters.maxBandwidth)
                }
                setStatus(.active)
            }
            // The destination has everything: total-time ends here, as QEMU's does. Ending
            // the dirty log (KVM rebuilding huge mappings: 20-40 ms for 2 GiB) is cleanup.
            progress.withLock { $0.endedAt = .now }
            endTracking()
            parts.vm.migrationCompleted()
            progress.withLock { p in p.info.errorDescription = p.cleanupFailure.map { "completed, but \($0)" } }
            finish(.completed)
        } catch {
            endTracking()
            // A snapshot's source never stops for good: its guest runs on whatever the destination did.
            let (cancelled, uncertain, postcopy) = progress.withLock {
                ($0.cancelRequested, $0.phase == .pastPointOfNoReturn && !capabilities.backgroundSnapshot, $0.postcopyStart != nil)
            }
            // A destination that refused the stream said why on the return path
            // before closing; that beats "broken pipe".  So does a page request that was refused here.
            var reason: MigrationError? = cancelled ? nil : (error.isPostcopyFailure ? error : requests.failure ?? error)
            if !cancelled, let answer = (error.isDestinationAnswer ? nil : destinationRefusal()) {
                reason = answer
            }
            let refused = reason?.isDestinationAnswer == true
            if postcopy {
                // The guest ran on the destination: its newest memory is there, whatever
                // the destination says now.  It stays stopped as the switch left it
                // (finish-migrate), which `cont` refuses: it never runs here again.
                if reason?.isPostcopyFailure != true { reason = .postcopyFailed(reason?.description ?? "no answer") }
            } else if uncertain && !refused {
                // The end frame may have arrived and the destination may run the guest:
                // never both.  The guest stays paused here until the operator decides.
                parts.vm.holdAfterUncertainSwitchover()
                reason = .uncertainOutcome(reason?.description ?? "no answer")
            } else if let wasRunning = stoppedGuest {
                parts.vm.resumeAfterFailedSwitchover(wasRunning: wasRunning)
            }
            progress.withLock { p in
                p.info.destinationMayRun = postcopy || (uncertain && !refused)
                p.info.errorDescription = [reason?.description, p.cleanupFailure].compactMap { $0 }.joined(separator: "; ")
                if p.info.errorDescription?.isEmpty == true { p.info.errorDescription = nil }
            }
            finish(cancelled ? .cancelled : .failed)
        }
        closeChannels()
    }

    /// Announces the multifd channels on the main channel, opens them (each opens
    /// with its identity) and starts their sending threads.
    func openMultifd(_ start: MigrationParameters, migrationID: [UInt8]) throws(MigrationError) {
        let count = Int(start.multifdChannels)
        let compression: ChannelPlan.Compression = start.multifdCompression == .zstd ? .zstd : .none
        try writer.send(.channels, payload: ChannelPlan(multifd: UInt16(count), compression: compression).encode())
        var writers: [StreamWriter] = []
        var zeroCopy: [any ZeroCopyChannel] = []
        for index in 0..<count {
            let extra = PendingChannel(parts.opener)
            multifdChannels.withLock { $0.append(extra) }
            try checkCancelled()
            do { try extra.open() } catch { throw MigrationError.channel(error) }
            if capabilities.zeroCopySend {
                do {
                    let channel = try extra.zeroCopyChannel
                    try channel.enableZeroCopy()
                    zeroCopy.append(channel)
                } catch { throw MigrationError.channel(error) }
            }
            let writer = StreamWriter(channel: extra, limiter: limiter)
            try writer.sendStreamHeader(ChannelIdentity(role: .multifd, index: UInt16(index), migrationID: migrationID))
            writers.append(writer)
        }
        let sender = MultifdSender(channels: multifdChannels.withLock { $0 }, writers: writers, mappings: parts.ram.mappings,
                                   detection: start.zeroPageDetection, statistics: parts.ram.statistics,
                                   zstdLevel: start.multifdCompression == .zstd ? Int(start.multifdZstdLevel) : nil,
                                   zeroCopy: capabilities.zeroCopySend ? zeroCopy : nil)
        parts.ram.use(.multifd(sender, start.zeroPageDetection))
    }

    /// Opens the `postcopy-preempt` channel (after the plan that announces it).
    func openPreempt(migrationID: [UInt8], opener: (any ChannelOpener)? = nil) throws(MigrationError) {
        let extra = PendingChannel(opener ?? parts.opener)
        let writer = StreamWriter(channel: extra, limiter: limiter)
        preempt.withLock { $0 = (extra, writer) }
        try checkCancelled()
        do { try extra.open() } catch { throw MigrationError.channel(error) }
        // A faulting vCPU waits for what it carries: a lost last segment of a requested
        // page is resent after `preemptRetransmitWait`, not TCP's 200 ms.
        extra.shortenRetransmitWait(to: Self.preemptRetransmitWait)
        try writer.sendStreamHeader(ChannelIdentity(role: .postcopyPreempt, migrationID: migrationID))
        startPreemptRequests(extra)
    }

    /// Reads the page requests the destination sends back on the preempt
    /// channel, apart from the main connection: there a request waited behind
    /// the background's writes (the slowest 1 % of 4 KiB requests, 1.2-1.6 ms
    /// between the destination writing one and the source reading it, with the
    /// background at 100 MB/s).  Served on this reader's thread, as the main
    /// reader serves the requests that come there (`PostcopyRequests`).  A request
    /// that does not fit, or a malformed stream, pauses postcopy: the main channel
    /// is shut, so the migration thread sees it at once.
    func startPreemptRequests(_ extra: PendingChannel) {
        let (requests, main) = (self.requests, self.channel)
        let reader = ReturnPathReader(pageRequestsOn: extra, onPageRequest: { block, offset, length in
            if !requests.add(block: block, offset: offset, length: length) { main.shutdown() }
        }, onFailure: { error in
            // A broken connection is seen where it is written to; a malformed way back only here.
            // A frame cut short is the connection ending (this side shuts it at a pause, and its
            // cause, not the cut, is the reason), as the end between two frames is.
            guard case .stream(let problem) = error else { return }
            if case .truncated = problem { return }
            requests.refuse(error)
            main.shutdown()
        })
        preemptRequests.withLock { $0 = reader }
        reader.start()
    }

    /// Shuts the preempt channel, waits for its requests' reader, closes it.
    func closePreempt() {
        guard let (extra, _) = preempt.withLock({ $0 }) else { return }
        extra.shutdown()
        preemptRequests.withLock { $0 }?.join()
        extra.close()
    }

    /// The preempt channel's least retransmission timeout (with 2 MiB pages, 3 of
    /// 7 runs had a request wait 210-222 ms, TCP's 200 ms floor; the path's
    /// round trip is under a millisecond, and a receiver delays its
    /// acknowledgements 40 ms at most).
    static let preemptRetransmitWait: Duration = .milliseconds(50)

    /// Mapped-ram: checks the opened file, continues it if it is the baseline
    /// (an incremental save) or starts it afresh, and points the state stream
    /// past the page areas.
    func prepareMappedRAM(_ settings: MappedRAMSettings) throws(MigrationError) -> MappedRAMSaver {
        let opened: any ByteChannel
        do { opened = try channel.channel } catch { throw .channel(error) }
        guard let file = opened as? any PageFile else { throw .invalidState("mapped-ram needs a file: URI") }
        let layout: MappedRAMLayout
        do { layout = try MappedRAMLayout(blocks: parts.configuration.blocks) } catch { throw .stream(error) }
        var start = MappedRAMSaver.Start.fresh(generation: 1)
        if let header = MappedRAMSaver.existing(in: file, layout: layout) {
            start = .fresh(generation: header.generation + 1)
            // The blocks (checksum tables: megabytes) are read only for a save that continues the file.
            if let baseline = settings.baseline, header.generation == baseline.generation, (try? file.identity) == baseline.file,
               let blocks = try? MappedRAMSaver.blocks(of: header, in: file) {
                start = .continuing(header, blocks)
            }
        }
        let saver = try MappedRAMSaver(file: file, layout: layout, mappings: parts.ram.mappings, start: start,
                                       workers: max(1, settings.writers))
        self.saver.withLock { $0 = saver }
        file.seek(to: layout.stateOffset)
        return saver
    }

    /// The threads that write pages into the mapped-ram file.
    func startFileWorkers(_ saver: MappedRAMSaver, _ start: MigrationParameters) {
        let (statistics, limiter) = (parts.ram.statistics, self.limiter)
        let detection = start.zeroPageDetection
        let sender = MultifdSender(workers: saver.barrier.parties, channels: [], limiter: limiter,
                                   jobPages: RAMMigration.fileJobPages,
                                   onFailure: { saver.barrier.abort() }) { _ throws(MigrationError) in
            FilePageWorker(saver: saver, detection: detection == .legacy ? .none : detection, statistics: statistics, limiter: limiter)
        }
        parts.ram.use(.multifd(sender, detection))
    }

    /// Ends the link's sampling (`LinkRateSampler`), keeping what it saw.
    func stopLinkSampler() {
        linkSampler.withLock { $0 }?.stop()
    }

    /// Every channel closed, once no thread uses it any more.
    func closeChannels() {
        if let sender = parts.ram.multifd {
            sender.abort()      // after a finished migration its threads are done already
            sender.close()
        } else {
            for extra in multifdChannels.withLock({ $0 }) { extra.close() }
        }
        closePreempt()
        closeChannel()
    }

    /// Throttle off, dirty tracking off, devices released: after any outcome.
    /// What failed to clean up is reported in `error-desc`.
    func endTracking() {
        removeThrottle()
        var failures: [String] = []
        for part in [parts.ram as any Migratable] + parts.devices {
            do { try part.cleanup() } catch { failures.append(error.description) }
        }
        guard !failures.isEmpty else { return }
        progress.withLock { $0.cleanupFailure = failures.joined(separator: "; ") }
    }

    /// Auto-converge's throttle off; `cpu-throttle-percentage` reads 0 from
    /// now on (as QEMU's, which reports the throttle in force).
    func removeThrottle() {
        parts.vm.setThrottle(percent: 0)
        progress.withLock { p in p.info.cpuThrottlePercentage = p.info.cpuThrottlePercentage.map { _ in 0 } }
    }

    /// The first section name that more than one device claims.
    static func duplicateSectionName(_ devices: [any Migratable]) -> String? {
        var seen = Set<String>()
        return devices.first { !seen.insert($0.sectionName).inserted }?.sectionName
    }

    // MARK: the live phase

    /// Sends while the guest runs until what is pending, asked exactly, fits the
    /// threshold; returns that threshold in bytes.
    ///
    /// The threshold is the limit, not the aim: once under it, another pass is
    /// made while passes still halve what the stop would send (a guest whose
    /// dirty rate is well below the bandwidth converges in a few short passes),
    /// and the switch happens when the stop would take under `quickSwitchover`,
    /// a pass stops halving, or after `maximumConvergingPasses`.
    func iterateUntilThresholdMet(throttle: inout Int) throws(MigrationError) -> LiveOutcome {
        var windowStart = ContinuousClock.now
        var windowBytes = limiter.totalBytes
        var windowPages = parts.ram.stats.normalPages + parts.ram.stats.zeroPages
        var threshold: UInt64 = 0
        var bytesAtSync = limiter.totalBytes
        var dirtyHighCount = 0
        var switchoverBandwidth = 0.0
        var converging: (lastExact: UInt64, passes: Int)?     // under the threshold, making more passes
        var waitingSince: ContinuousClock.Instant?            // for the destination to apply the last pass
        while true {
            try checkCancelled()
            if progress.withLock({ $0.postcopyRequested }) {
                guard channel.hasReturnPath else {
                    throw .invalidState("postcopy needs the destination's page requests, so a socket: this migration has no return path")
                }
                return .postcopy
            }
            let parameters = self.parameters      // live: re-read every round
            let now = ContinuousClock.now
            let passDone = parts.ram.pendingEstimate() == 0      // every page of this pass is out
            if now - windowStart >= Self.window {
                let seconds = Self.seconds(now - windowStart)
                let bytes = limiter.totalBytes, stats = parts.ram.stats
                // A window that sent nothing (everything already out, the guest idle or
                // stopped) says nothing about the link: use the average since the start.
                let bandwidth = bytes > windowBytes ? Double(bytes - windowBytes) / seconds : averageBandwidth(at: now)
                (switchoverBandwidth, threshold) = Self.switchoverBudget(measured: bandwidth, parameters)
                let pending = pendingEstimate()
                let delivery = bytes > windowBytes ? channel.deliveryRate() : nil
                progress.withLock { p in
                    p.info.bandwidth = bandwidth
                    if bytes > windowBytes {
                        let window = PostcopyPacing.Window(sent: bandwidth, delivery: delivery, maxBandwidth: parameters.maxBandwidth)
                        p.recentWindows = Array((p.recentWindows + [window]).suffix(PostcopyPacing.windows))
                    }
                    p.info.pagesPerSecond = UInt64(Double(stats.normalPages + stats.zeroPages - windowPages) / seconds)
                    p.info.expectedDowntime = switchoverBandwidth > 0 ? UInt64(Double(pending) / switchoverBandwidth * 1000) : nil
                }
                (windowStart, windowBytes, windowPages) = (now, bytes, stats.normalPages + stats.zeroPages)
            }
            // A first pass done before the first window closed (a small or idle guest, an
            // incremental save) does not wait for it: what was sent, over at least a
            // window's time, is the estimate.  Until then the threshold is 0, which no
            // device state fits.  Not after a refused switchover: its retry waits for a
            // window, as before, rather than stop again at once.
            if switchoverBandwidth == 0 && passDone && progress.withLock({ $0.info.switchoverRetries }) == 0 {
                (switchoverBandwidth, threshold) = Self.switchoverBudget(measured: averageBandwidth(at: now), parameters)
            }
            // While converging, the next sync waits until the last one's pages are all out
            // (with multifd: applied by the destination, so no older pass is in flight at the stop).
            let caughtUp = destinationCaughtUp(since: &waitingSince)
            // A pass with every page out syncs too, whatever the devices estimate: with
            // nothing to send and no sync, the loop would spin on the last pass's pages
            // (seen: a minute at 100 % CPU, `query-migrate` starved of the lock, when
            // the devices' running estimate was over a 1 ms downtime's threshold).
            if converging == nil ? pendingEstimate() <= threshold || passDone : passDone && caughtUp {
                let dirtied = try parts.ram.sync()
                onPass(parts.ram.stats.dirtySyncCount)
                if capabilities.autoConverge {
                    let dirtyBytes = UInt64(dirtied * RAMMigration.pageSize)
                    let sentBytes = limiter.totalBytes - bytesAtSync
                    if dirtyBytes > sentBytes * UInt64(parameters.throttleTriggerThreshold) / 100 {
                        dirtyHighCount += 1
                        if dirtyHighCount >= 2 {
                            dirtyHighCount = 0
                            let next = throttle == 0 ? Int(parameters.cpuThrottleInitial)
                                : min(throttle + Int(parameters.cpuThrottleIncrement), Int(parameters.maxCPUThrottle))
                            throttle = max(throttle, next)      // a lowered max-cpu-throttle never lowers it mid-migration
                            parts.vm.setThrottle(percent: throttle)
                            progress.withLock { $0.info.cpuThrottlePercentage = throttle }
                        }
                    }
                }
                bytesAtSync = limiter.totalBytes
                var exact = parts.ram.pendingEstimate()
                for device in parts.devices { exact += try device.pendingExact() }
                if exact <= threshold {
                    let quick = Self.byteCount(switchoverBandwidth * Self.seconds(Self.quickSwitchover))
                    let stalled = converging.map { exact * 2 > $0.lastExact || $0.passes >= Self.maximumConvergingPasses } ?? false
                    if (exact <= quick || stalled) && caughtUp {
                        progress.withLock { $0.info.expectedDowntime = nil }
                        return .switchover(threshold: threshold)
                    }
                    converging = (exact, (converging?.passes ?? 0) + 1)
                } else {
                    converging = nil
                }
            }
            let nothingDirty = parts.ram.dirtyPageCount == 0
            _ = try parts.ram.iterate(writer)
            for device in parts.devices { _ = try device.iterate(writer) }
            writer.waitForBudget()
            // Nothing to pick (multifd channels drain, the destination catches up, or a
            // sync found nothing while the downtime limit cannot be met): do not spin.
            if nothingDirty { sleepUntil(.now + .milliseconds(1)) }
        }
    }

    /// The bandwidth the switchover counts on (`avail-switchover-bandwidth` when
    /// set, else `measured`) and the bytes it may send within `downtime-limit`.
    static func switchoverBudget(measured: Double, _ parameters: MigrationParameters) -> (bandwidth: Double, threshold: UInt64) {
        let bandwidth = parameters.availSwitchoverBandwidth > 0 ? Double(parameters.availSwitchoverBandwidth) : measured
        return (bandwidth, byteCount(bandwidth * Double(parameters.downtimeLimit) / 1000))
    }

    /// Bytes from a product of rates and times, at most `UInt64.max`: the
    /// parameters take any uint64, and 2^63 bytes/s times a 2000 s limit is past it.
    static func byteCount(_ value: Double) -> UInt64 {
        value >= 0x1p64 ? .max : value > 0 ? UInt64(value) : 0
    }

    /// Bytes per second sent since the migration started, over at least one
    /// window's time: what socket buffers took at once in the first milliseconds,
    /// or a rate limit's first window released in one go, must not read as the link.
    func averageBandwidth(at now: ContinuousClock.Instant) -> Double {
        Double(limiter.totalBytes) / max(Self.seconds(now - progress.withLock { $0.startedAt }), Self.seconds(Self.window))
    }

    /// How the live phase ends.
    enum LiveOutcome: Equatable {
        /// What is pending fits this many bytes: stop and send the rest.
        case switchover(threshold: UInt64)
        /// `migrate-start-postcopy` was asked.
        case postcopy
    }

    func pendingEstimate() -> UInt64 {
        parts.devices.reduce(parts.ram.pendingEstimate()) { $0 + $1.pendingEstimate() }
    }

    /// Multifd: whether the destination reports every page before the last sync
    /// applied, so stopping now leaves nothing of an older pass in flight (its
    /// sockets may hold many megabytes that a destination bound by fresh memory
    /// takes a while to place).  A destination that says nothing for
    /// `catchUpLimit` is not waited for longer.  Without multifd: always.
    func destinationCaughtUp(since waiting: inout ContinuousClock.Instant?) -> Bool {
        guard let multifd = parts.ram.multifd, let reader = returnPath.withLock({ $0 }) else { return true }
        if reader.appliedEpoch >= multifd.epoch {
            waiting = nil
            return true
        }
        let start = waiting ?? .now
        waiting = start
        return ContinuousClock.now - start >= Self.catchUpLimit
    }

    /// How long the switchover waits, at most, for the destination to apply the last pass.
    static let catchUpLimit: Duration = .seconds(2)

    // MARK: switchover

    /// Guest stopped: the last RAM, every device, end, and the destination's answer.
    /// `false` when the exact device state would break the downtime limit's
    /// `threshold` (retried at most three times, as a device that grows while
    /// stopped must not stall us).
    func switchover(threshold: UInt64, stopRequested: ContinuousClock.Instant) throws(MigrationError) -> Bool {
        setStatus(.device)
        let bytesBefore = limiter.totalBytes
        var deviceBytes: UInt64 = 0
        for device in parts.devices { deviceBytes += try device.pendingExact() }
        let retries = progress.withLock { $0.info.switchoverRetries }
        if deviceBytes > threshold && retries < 3 {
            progress.withLock { $0.info.switchoverRetries += 1 }
            return false
        }
        try parts.ram.complete(writer)
        for device in parts.devices { try device.complete(writer) }
        // The point of no return: once `end` is out, the destination may run.  From
        // here on a cancel is ignored; a failed write of `end` (the destination
        // cannot have it whole) still lets the source resume.
        try progress.withLock { p throws(MigrationError) in
            if p.cancelRequested { throw .cancelled }
            p.phase = p.phase.next(.sendingEnd)
        }
        try preempt.withLock { $0 }?.writer.sendEnd()
        try writer.sendEnd()
        if let saver = saver.withLock({ $0 }) {
            // Complete only once the header says so: a failure before resumes the source.
            try saver.finish(stateLength: writer.bytesWritten)
            let identity: FileIdentity
            do { identity = try saver.file.identity } catch { throw .channel(error) }
            let outcome = MappedRAMOutcome(baseline: MappedRAMBaseline(file: identity, generation: saver.generation),
                                           incremental: saver.continued, presentPages: saver.presentPages)
            progress.withLock { $0.mappedRAM = outcome }
            if parts.mappedRAM?.keepTracking == true { parts.ram.keepTrackingAfterCleanup() }
        }
        progress.withLock { $0.phase = $0.phase.next(.pastPointOfNoReturn) }
        if channel.hasReturnPath { try awaitDestination() }
        let downtime = ContinuousClock.now - stopRequested
        progress.withLock { p in
            p.info.downtime = Self.milliseconds(downtime)
            p.info.downtimeBytes = limiter.totalBytes - bytesBefore
        }
        return true
    }

    /// Waits for the destination's "loaded" on the return path.
    func awaitDestination() throws(MigrationError) {
        guard let reader = returnPath.withLock({ $0 }) else { return }
        let deadline = ContinuousClock.now + Self.returnPathTimeout
        while true {
            let remaining = deadline - .now
            guard remaining > .zero, let event = reader.next(timeout: remaining) else {
                throw .destination("no answer within \(Self.returnPathTimeout)")
            }
            switch event {
            case .message(.loaded): return
            // The destination refused: it will not run the guest.
            case .message(.failed(let reason)): throw .refused(reason)
            case .message(.shut), .closed: throw .destination("it closed the connection before confirming")
            case .message(.pageRequest), .message(.receivedBitmap), .message(.switchoverAck), .message(.applied):
                continue   // not asked for in precopy (progress reports never reach the mailbox)
            case .failed(let error): throw error
            }
        }
    }

    /// What the destination said on the return path after a failure here: its
    /// "failed" answer (`.refused`) if one arrives within 200 ms, or the return
    /// stream's own protocol error; `nil` if it said nothing (or was fine).
    func destinationRefusal() -> MigrationError? {
        guard let reader = returnPath.withLock({ $0 }) else { return nil }
        let deadline = ContinuousClock.now + .milliseconds(200)
        while true {
            let remaining = deadline - .now
            guard remaining > .zero, let event = reader.next(timeout: remaining) else { return nil }
            switch event {
            case .message(.failed(let reason)): return .refused(reason)
            case .message: continue
            case .failed(.stream(let error)): return .stream(error)
            case .closed, .failed: return nil
            }
        }
    }

    /// Starts reading the return path, if the channel has one.
    func startReturnPath() {
        guard channel.hasReturnPath else { return }
        let (requests, channel) = (self.requests, self.channel)
        let reader = ReturnPathReader(channel: channel) { block, offset, length in
            // A request that does not fit fails the migration: its next write fails at once.
            if !requests.add(block: block, offset: offset, length: length) { channel.shutdown() }
        }
        returnPath.withLock { $0 = reader }
        reader.start()
    }

    /// Shuts the channel (which wakes the return-path reader with the end of
    /// the stream), waits for the reader to return, and only then closes the
    /// descriptor, whose number may be reused as soon as it is closed.
    func closeChannel() {
        if let reader = returnPath.withLock({ $0 }) {
            channel.shutdown()
            reader.join()
        }
        channel.close()
    }

    // MARK: status

    func checkCancelled() throws(MigrationError) {
        if progress.withLock({ $0.cancelRequested }) { throw .cancelled }
    }

    func setStatus(_ status: MigrationStatus) {
        statusEvents.withLock { _ in
            let changed = progress.withLock { p -> Bool in
                guard p.info.status != status, !p.cancelRequested || status == .cancelled else { return false }
                p.info.status = status
                return true
            }
            if changed { onStatus(status) }
        }
    }

    /// The last status.  A failure after `migrate_cancel` was accepted (it
    /// came while the failure was being handled) ends `cancelled`, as in QEMU:
    /// `cancelling` never leads to `failed`.
    func finish(_ status: MigrationStatus) {
        statusEvents.withLock { _ in
            let final = progress.withLock { p -> MigrationStatus in
                p.endedAt = p.endedAt ?? .now
                p.info.status = status == .failed && p.info.status == .cancelling ? .cancelled : status
                p.info.bandwidth = 0
                return p.info.status
            }
            onStatus(final)
        }
    }

    static func milliseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return UInt64(max(0, seconds)) * 1000 + UInt64(max(0, attoseconds)) / 1_000_000_000_000_000
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
