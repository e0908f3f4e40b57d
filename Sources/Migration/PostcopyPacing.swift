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

    /// The rate for the background, in bytes per second; nil for none.
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
    ///   there is no pace).  The rate is the median of the busy windows' TCP
    ///   samples, or less: `linkRate` of the 20 ms samples (`LinkRateSampler`)
    ///   when there are enough, else the median of what the windows sent.
    ///   TCP's samples run ahead of the link (a shaper's burst,
    ///   acknowledgements that arrive bunched: single ones reached 1.7 times
    ///   its rate), and a pace even a few percent above what the link carries
    ///   keeps its queue full (measured: a request's median wait 1 ms at
    ///   1 Gbit/s, against 0.1-0.2 ms paced from what was sent).  None when
    ///   `percent` is 0.
    public static func rate(_ recent: [Window], linkSamples: [Double] = [], maxPostcopyBandwidth: UInt64,
                            percent: UInt8, preempt: Bool) -> UInt64? {
        guard preempt else { return nil }
        if maxPostcopyBandwidth > 0 { return maxPostcopyBandwidth }
        let busy = recent.filter { $0.delivery != nil && !$0.limited }
        guard percent > 0, !busy.isEmpty, busy.count * 2 >= recent.count else { return nil }
        guard let sent = median(busy.map(\.sent)), let delivered = median(busy.compactMap { $0.delivery.map { Double($0) } }),
              sent > 0 else { return nil }
        // TCP's samples run ahead of the link more than the short ones do: they bound them.
        let link = linkRate(linkSamples).map { min($0, delivered) } ?? min(delivered, sent)
        return UInt64(link * Double(percent) / 100)
    }

    /// Samples `linkRate` needs (a busy host wakes the sampler late: 1 s of
    /// precopy gave 20 of them).
    public static let minimumLinkSamples = 10

    /// The link's rate from short delivery samples (bytes per second): their
    /// 80th percentile.  The samples under it are the moments the link's queue
    /// ran empty (the sender busy elsewhere, TCP recovering a loss); the few
    /// over it, acknowledgements that came bunched.  Nil with fewer than
    /// `minimumLinkSamples`, or when they are all zero.
    public static func linkRate(_ samples: [Double]) -> Double? {
        guard samples.count >= minimumLinkSamples else { return nil }
        let sorted = samples.sorted()
        let rate = sorted[(sorted.count - 1) * 4 / 5]
        return rate > 0 ? rate : nil
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
