/// How fast the main channel's background pages may leave after the switch to
/// postcopy, so that the pages a faulting vCPU waits for do not queue, or get
/// dropped, behind them at the link's bottleneck.
///
/// Background pages sent as fast as TCP allows keep the bottleneck's queue full
/// (a shaped 1 Gbit/s link's holds 1 ms), and a requested page on the preempt
/// channel waits in it or is dropped from it and resent from a timer.  Paced a
/// little under the link's rate (the kernel's `SO_MAX_PACING_RATE`, no qdisc
/// needed), the background leaves that queue short.
public enum PostcopyPacing {
    /// One 100 ms window of precopy, as the estimate sees it.
    public struct Window: Equatable, Sendable {
        /// What the window sent, bytes per second.
        public let sent: Double
        /// TCP's delivery-rate sample at its end (`ByteChannel.deliveryRate`):
        /// nil when the sample was application-limited (the sender did not keep
        /// the path busy: zero pages scanned, a sync awaited) or there was none.
        public let delivery: UInt64?
        /// `max-bandwidth` held it back (it sent within 10 % of the limit then in force).
        public let limited: Bool

        public init(sent: Double, delivery: UInt64?, maxBandwidth: UInt64) {
            self.sent = sent
            self.delivery = delivery
            limited = maxBandwidth > 0 && sent >= Double(maxBandwidth) * 0.9
        }
    }

    /// The windows the estimate is taken from (the last ones of precopy).
    public static let windows = 10

    /// The rate for the background and the requested pages together, in bytes
    /// per second; nil for none.
    ///
    /// - Without a preempt channel (`preempt` false): none.  A requested page
    ///   then queues in the main socket behind what it holds unsent, which
    ///   pacing would only drain more slowly (`max-postcopy-bandwidth` is held
    ///   by the rate limiter, which never holds back a request).
    /// - `max-postcopy-bandwidth` set: that rate (the rate limiter holds it on
    ///   average; paced, the background leaves smoothly rather than in bursts).
    /// - Otherwise `percent` of the link's rate, if precopy's last windows
    ///   show the link held it (more than half of them busy: a delivery-rate
    ///   sample, not held by `max-bandwidth`; else the rate is not known, and
    ///   there is no pace).  The rate is `linkRate` of the delivered counts
    ///   (`LinkRateSampler`) when there are enough, else the lesser of the busy
    ///   windows' median TCP sample and median of what they sent.  None when
    ///   `percent` is 0.
    ///   `quantile` is `linkRate`'s (`hugePageQuantile` with huge pages).
    public static func rate(_ recent: [Window], linkSamples: [Delivered] = [], maxPostcopyBandwidth: UInt64,
                            percent: UInt8, preempt: Bool, quantile: Double = quantile) -> UInt64? {
        guard preempt else { return nil }
        if maxPostcopyBandwidth > 0 { return maxPostcopyBandwidth }
        guard percent > 0, let link = link(recent, linkSamples: linkSamples, quantile: quantile) else { return nil }
        return UInt64(link * Double(percent) / 100)
    }

    /// The link's rate in bytes per second as `rate` takes it (before its
    /// `percent`); nil when precopy did not show it.
    public static func link(_ recent: [Window], linkSamples: [Delivered] = [], quantile: Double = quantile) -> Double? {
        let busy = recent.filter { $0.delivery != nil && !$0.limited }
        guard !busy.isEmpty, busy.count * 2 >= recent.count else { return nil }
        guard let sent = median(busy.map(\.sent)), let delivered = median(busy.compactMap { $0.delivery.map { Double($0) } }),
              sent > 0 else { return nil }
        return linkRate(linkSamples, quantile: quantile) ?? min(delivered, sent)
    }

    /// TCP's count of the bytes that reached the other side, at one moment.
    public struct Delivered: Equatable, Sendable {
        public let at: ContinuousClock.Instant
        public let bytes: UInt64

        public init(at: ContinuousClock.Instant, bytes: UInt64) {
            self.at = at
            self.bytes = bytes
        }
    }

    /// How long a stretch of the counts `linkRate` takes a rate over.
    public static let stretch: Duration = .milliseconds(100)
    /// Stretches `linkRate` needs (a busy host wakes the sampler late: 1 s of
    /// precopy gave 20 counts).
    public static let minimumStretches = 5

    /// `linkRate`'s quantile with 4 KiB pages.
    public static let quantile = 0.8
    /// ... with huge pages: there the preempt channel is paced at the estimate and
    /// carries most of the guest's memory one requested page at a time, so an
    /// estimate under the link lengthens every page.  At the 80th percentile a
    /// third of the runs read 97-101 MB/s (pace) on a link carrying about 119
    /// and took 18.1-24.1 s against 15.2-17.1; at the 95th none of 5 did, and the
    /// pace read 116-121.  With 4 KiB pages the 95th left the background and the
    /// requests at the link and their p99 at 0.6-1.0 ms, against 0.52-0.53 ms
    /// at the 80th in the runs whose estimate read under it (4 rounds each).
    public static let hugePageQuantile = 0.95

    /// The link's rate from delivered counts taken every few milliseconds
    /// (bytes per second): the `quantile` of their rates over stretches
    /// of at least `stretch`, one starting at each count.  The stretches under
    /// it are the moments the link's queue ran empty (the sender busy
    /// elsewhere, TCP recovering a loss).  Rates over 20 ms alone ran ahead of
    /// the link: acknowledgements come bunched, and on a shaped 1 Gbit/s link
    /// (about 119 MB/s of payload) their 80th percentile read 126-136 MB/s,
    /// where 100 ms stretches read 108-123.  Nil with fewer than
    /// `minimumStretches`, or when nothing was delivered.
    public static func linkRate(_ samples: [Delivered], quantile: Double = quantile) -> Double? {
        var rates: [Double] = []
        var end = 0
        for (index, start) in samples.enumerated() {
            end = max(end, index + 1)
            while end < samples.count, samples[end].at - start.at < stretch { end += 1 }
            guard end < samples.count else { break }
            let last = samples[end]
            guard last.bytes >= start.bytes else { continue }
            rates.append(Double(last.bytes - start.bytes) / PrecopySource.seconds(last.at - start.at))
        }
        guard rates.count >= minimumStretches else { return nil }
        let rate = rates.sorted()[Int(Double(rates.count - 1) * min(max(quantile, 0), 1))]
        return rate > 0 ? rate : nil
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
