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
    /// - Otherwise `percent` of the link's rate as the busy windows among
    ///   precopy's last ones saw it (those with a delivery-rate sample, not held
    ///   by `max-bandwidth`): the lesser of the median of their samples and the
    ///   median of what they sent.  Samples run ahead of the link (a shaper's
    ///   burst, acknowledgements that arrive bunched: single ones reached 1.7
    ///   times its rate), and a pace even a few percent above what the link
    ///   carries keeps its queue full (measured: a request's median wait 1 ms
    ///   at 1 Gbit/s, against 0.1-0.2 ms paced from what was sent).  None when
    ///   `percent` is 0 or fewer than half of the windows were busy: then the
    ///   link's rate is not known.
    public static func rate(_ recent: [Window], maxPostcopyBandwidth: UInt64, percent: UInt8, preempt: Bool) -> UInt64? {
        guard preempt else { return nil }
        if maxPostcopyBandwidth > 0 { return maxPostcopyBandwidth }
        let busy = recent.filter { $0.delivery != nil && !$0.limited }
        guard percent > 0, !busy.isEmpty, busy.count * 2 >= recent.count,
              let sent = median(busy.map(\.sent)), let delivered = median(busy.compactMap { $0.delivery.map { Double($0) } }),
              sent > 0 else { return nil }
        return UInt64(min(delivered, sent) * Double(percent) / 100)
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
