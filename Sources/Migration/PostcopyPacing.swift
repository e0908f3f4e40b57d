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
    /// The window bandwidths the estimate is taken from (the last ones of precopy).
    public static let windows = 5

    /// The rate for the background, in bytes per second; nil for none.
    ///
    /// - `max-postcopy-bandwidth` set: that rate (QEMU's limit, which the rate
    ///   limiter holds on average, then leaves smoothly rather than in bursts).
    /// - Otherwise `percent` of the link's rate as precopy's last windows saw
    ///   it: the highest of TCP's delivery-rate samples (taken while the socket
    ///   kept the path busy), or without one the median of what the windows
    ///   sent (lower than the link's rate where losses slow TCP down).  Not
    ///   paced when `percent` is 0, nothing was measured, or the precopy was held
    ///   by `max-bandwidth` (its windows within 10 % of it): then the link's rate
    ///   is not known.
    public static func rate(precopyWindows: [Double], deliveryRates: [UInt64] = [], maxBandwidth: UInt64,
                            maxPostcopyBandwidth: UInt64, percent: UInt8) -> UInt64? {
        if maxPostcopyBandwidth > 0 { return maxPostcopyBandwidth }
        guard percent > 0 else { return nil }
        let sent = median(precopyWindows)
        if let sent, maxBandwidth > 0, sent >= Double(maxBandwidth) * 0.9 { return nil }
        guard let link = deliveryRates.max().map({ Double($0) }) ?? sent, link > 0 else { return nil }
        return UInt64(link * Double(percent) / 100)
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }
}
