import MigrationProtocol

/// Postcopy on the source:
///
///     active ──(migrate-start-postcopy)──▶ stop, sync, device state, `postcopy` frame
///            ──▶ postcopy-active: requested pages first, the rest in the background ──▶ end ──▶ completed
///     postcopy-active ──(a break)──▶ postcopy-paused ──▶ … ──▶ postcopy-active (PrecopySource+Recovery.swift)
///
/// The `postcopy` frame is the point of no return: once it may have reached
/// the destination, the destination runs the guest, so the source guest never
/// runs again on its own, whatever happens next (QEMU: "a failure of either
/// side causes the guest to be lost").
extension PrecopySource {
    /// QMP `migrate-start-postcopy`: the live phase switches to postcopy at its
    /// next round.  QEMU's rules and texts.
    public func startPostcopy() throws(MigrationError) {
        guard capabilities.postcopyRAM else {
            throw .invalidParameter("Enable postcopy with migrate_set_capability before the start of migration")
        }
        try progress.withLock { p throws(MigrationError) in
            guard !p.info.status.isFinished else { throw .invalidState("Postcopy must be started after migration has been started") }
            p.postcopyRequested = true
        }
    }

    /// The guest is stopped: the last dirty log, the pages still dirty as the
    /// discard set, every device's state, the switch; then RAM follows until
    /// every page is out, and the destination confirms.
    func runPostcopy(stopRequested: ContinuousClock.Instant) throws(MigrationError) {
        removeThrottle()
        setStatus(.device)
        let bytesBefore = limiter.totalBytes
        try parts.ram.sync(guestStopped: true)
        let discard = parts.ram.postcopyDiscard()
        for device in parts.devices { try device.complete(writer) }
        try progress.withLock { p throws(MigrationError) in
            if p.cancelRequested { throw .cancelled }
            p.phase = p.phase.next(.sendingEnd)
        }
        // Requests are taken from now: the destination may ask as soon as it has the switch.
        requests.open()
        try writer.send(.postcopy, payload: discard.encode())
        writer.setRateLimit(parameters.maxPostcopyBandwidth)
        let downtime = ContinuousClock.now - stopRequested
        progress.withLock { p in
            p.phase = p.phase.next(.pastPointOfNoReturn)
            p.postcopyStart = limiter.totalBytes
            p.info.downtime = Self.milliseconds(downtime)
            p.info.downtimeBytes = limiter.totalBytes - bytesBefore
        }
        setStatus(.postcopyActive)
        while true {
            var endsSent = false
            do throws(MigrationError) {
                let urgent = preempt.withLock { $0 }?.writer
                applyPostcopyPacing()
                let hugePages = parts.ram.hasHugePages
                let yields = progress.withLock { $0.hugePageYield != nil }
                try parts.ram.sendPostcopy(writer, urgent: urgent, requests: requests,
                                           trainBytes: yields ? PostcopyHugePageYield.trainBytes : RAMMigration.postcopyBurstBytes,
                                           afterUrgent: { [self] in
                                               if yields, let urgent { yieldToUrgentPage(urgentQueued: urgent.channel.queuedBytes()) }
                                           }) {
                    [self] () -> Duration? in
                    guard let urgent else { return nil }
                    return adaptPostcopyPacing(urgentBytes: urgent.bytesWritten,
                                               urgentQueued: hugePages ? urgent.channel.queuedBytes() : nil,
                                               queueDelay: hugePages ? nil : writer.channel.queueDelay())
                }
                flowAfterPostcopyBackground()
                try urgent?.sendEnd()
                try writer.sendEnd()
                endsSent = true
                try awaitDestination()
                return
            } catch {
                // The guest runs on the destination: a break pauses (a recovery resends
                // what it lacks); only the destination giving up ends it.
                try pauseUntilResumed(after: error, endsSent: endsSent)
            }
        }
    }

    /// Paces the main channel for postcopy's background (`PostcopyPacing`) from
    /// the parameters in force and what precopy measured.  Under the progress
    /// lock, so a parameter change and the postcopy thread cannot apply their
    /// rates in the wrong order.
    func applyPostcopyPacing() {
        let parameters = self.parameters
        let samples = linkSampler.withLock { $0 }?.samples ?? []
        let urgent = preempt.withLock { $0 }?.channel
        progress.withLock { p in
            // With huge pages the link is read from the upper stretches (`PostcopyPacing.hugePageQuantile`).
            let hugePages = parts.ram.hasHugePages
            let rate = PostcopyPacing.rate(p.recentWindows, linkSamples: samples, maxPostcopyBandwidth: parameters.maxPostcopyBandwidth,
                                           percent: parameters.postcopyPacing, preempt: capabilities.postcopyPreempt,
                                           quantile: hugePages ? PostcopyPacing.hugePageQuantile : PostcopyPacing.quantile)
            p.info.postcopyPacing = rate ?? 0
            // Paced from the link's estimate, the background leaves the requested pages their share.
            // Not with huge pages: a requested 2 MiB page is 17 ms of a 1 Gbit/s link, fills the
            // bottleneck's queue by itself, and 1 ms of queue ahead of it is little.
            // With them, it steps aside while a requested page crosses the link instead.
            // A parameter changed in postcopy: the background goes on yielding, or with the
            // estimate's correction it had (a pause forgets both).
            let (earlierPace, yielding) = (p.backgroundPace, p.hugePageYield)
            p.backgroundPace = nil
            p.hugePageYield = nil
            if let rate, parameters.maxPostcopyBandwidth == 0, !hugePages,
               let link = PostcopyPacing.link(p.recentWindows, linkSamples: samples) {
                p.backgroundPace = PostcopyBackgroundPace(link: UInt64(link), most: rate, continuing: earlierPace)
            }
            if let rate, hugePages { p.hugePageYield = PostcopyHugePageYield(pace: rate, continuing: yielding) }
            pacePostcopyBackground(p.hugePageYield?.currentPace ?? p.backgroundPace?.applied ?? rate, &p.info)
            urgent?.limitPacing(p.hugePageYield?.urgentPace)
        }
    }

    /// The background's pace, less what the preempt channel has carried of late
    /// and corrected by the main channel's `queueDelay` (`PostcopyBackgroundPace`), or stepping aside while it holds a requested
    /// huge page (`PostcopyHugePageYield`, from `urgentQueued`, the preempt
    /// channel's bytes not yet acknowledged); called by the background between
    /// its frames.  Returns how soon the background should look again, nil: no sooner than it does.
    func adaptPostcopyPacing(urgentBytes: UInt64, urgentQueued: UInt64?, queueDelay: Duration? = nil) -> Duration? {
        progress.withLock { p -> Duration? in
            if var pace = p.backgroundPace {
                if let rate = pace.update(urgentBytes: urgentBytes, queueDelay: queueDelay, at: .now) {
                    pacePostcopyBackground(rate, &p.info)
                    if rate < pace.most, p.info.postcopyPacingLowest == 0 || rate < p.info.postcopyPacingLowest {
                        p.info.postcopyPacingLowest = rate
                    }
                }
                p.backgroundPace = pace
            }
            guard var yield = p.hugePageYield else { return nil }
            // No count (the preempt channel closed): nothing of it is in the way.
            if let rate = yield.update(urgentQueued: urgentQueued ?? 0) { pacePostcopyBackground(rate, &p.info) }
            p.hugePageYield = yield
            p.info.postcopyYields = p.earlierYields + yield.yields
            // Every millisecond, flowing too: a page asked for is sent by the return path's
            // reader, and nothing wakes this thread for it (looked at only after each frame,
            // 2 ms or more apart, the request p99 rose from 20-22 to 27 ms).
            return PostcopyHugePageYield.interval
        }
    }

    /// A requested page was just written to the preempt channel, which holds
    /// `urgentQueued` bytes not yet acknowledged: the background steps aside now
    /// (`PostcopyHugePageYield`), on the return path's reader, rather than when
    /// it next looks (up to `PostcopyHugePageYield.interval` later, at its full
    /// pace meanwhile).  Only ever to yield: the background alone sees the page
    /// through and flows again.
    func yieldToUrgentPage(urgentQueued: UInt64?) {
        progress.withLock { p in
            guard var yield = p.hugePageYield, yield.state == .flowing else { return }
            if let rate = yield.update(urgentQueued: urgentQueued ?? 0) { pacePostcopyBackground(rate, &p.info) }
            p.hugePageYield = yield
            p.info.postcopyYields = p.earlierYields + yield.yields
        }
    }

    /// Once the background has sent its last page: what it still holds, and the
    /// end frames, leave at its pace, not at the yielding one.
    func flowAfterPostcopyBackground() {
        progress.withLock { p in
            guard var yield = p.hugePageYield else { return }
            if let rate = yield.update(urgentQueued: 0) { pacePostcopyBackground(rate, &p.info) }
            p.hugePageYield = yield
        }
    }

    /// Paces the main channel at `rate` (nil: not paced), and says so in `x-ferry-postcopy`'s `pacing-now`.
    private func pacePostcopyBackground(_ rate: UInt64?, _ info: inout MigrationInfo) {
        channel.limitPacing(rate)
        info.postcopyPacingNow = rate ?? 0
    }
}
