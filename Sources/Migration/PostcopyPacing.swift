/// How fast the main channel's background pages may leave after the switch to
/// postcopy, so that the pages a faulting vCPU waits for do not queue, or get
/// dropped, behind them at the link's bottleneck.
///
/// Background pages sent as fast as TCP allows keep the bottleneck's queue full
/// (a shaped 1 Gbit/s link's holds 1 ms), and a requested page, on the preempt
/// channel or not, waits in it or is dropped from it and resent from a timer.
/// Paced a little under the link's rate (the kernel's `SO_MAX_PACING_RATE`, no
/// qdisc needed), the background leaves that queue short.
public enum PostcopyPacing {
    /// The windows the estimate is taken from (the last ones of precopy, 100 ms each).
    public static let windows = 10
    /// How far above what the windows sent the link's rate may be taken to be.
    static let headroom = 1.1

    /// The rate for the background, in bytes per second; nil for none.
    ///
    /// - `max-postcopy-bandwidth` set: that rate (QEMU's limit, which the rate
    ///   limiter holds on average, then leaves smoothly rather than in bursts).
    /// - Otherwise, with a preempt channel (`preempt`), `percent` of the link's rate as precopy's last windows saw
    ///   it: the median of TCP's delivery-rate samples (one at the end of each
    ///   window in which the socket kept the path busy), at most `headroom` times
    ///   the median of what the windows sent (a sample can be far too high:
    ///   acknowledgements that arrive bunched); without samples, what the windows
    ///   sent (lower than the link's rate where losses slow TCP down).  Not paced
    ///   when `percent` is 0, nothing was measured, or the precopy was held by
    ///   `max-bandwidth` (its windows within 10 % of it): then the link's rate is
    ///   not known.
    /// - Without a preempt channel, not paced: a requested page then queues in
    ///   the main socket behind what it holds unsent, which pacing would only
    ///   drain more slowly.
    public static func rate(precopyWindows: [Double], deliveryRates: [UInt64] = [], maxBandwidth: UInt64,
                            maxPostcopyBandwidth: UInt64, percent: UInt8, preempt: Bool = true) -> UInt64? {
        if maxPostcopyBandwidth > 0 { return maxPostcopyBandwidth }
        guard preempt, percent > 0, let sent = median(precopyWindows), sent > 0 else { return nil }
        if maxBandwidth > 0, sent >= Double(maxBandwidth) * 0.9 { return nil }
        let link = median(deliveryRates.map { Double($0) }).map { min($0, sent * headroom) } ?? sent
        return UInt64(link * Double(percent) / 100)
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
