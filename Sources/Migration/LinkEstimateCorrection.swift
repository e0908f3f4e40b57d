/// Ferry's own: postcopy's correction of precopy's link estimate by the queue
/// the main socket sees at the bottleneck, for the background's pace with
/// 4 KiB pages (`PostcopyBackgroundPace`).
///
/// Precopy's estimate sometimes reads a few percent over the link, and then
/// the background paced at it keeps the bottleneck's queue full.  In other runs
/// it reads 15-45 % under it: the host's two cores starved precopy's sender,
/// and no 100 ms stretch of its one second delivered what the link carries.
/// Every page then crossed that much slower (paced at 65-83 MB/s on a link
/// carrying about 115, postcopy took 19-25 s against 14-16).  The socket's
/// queue delay (`ByteChannel.queueDelay`, its smoothed round trip less the
/// least one seen) tells the two apart: while its least over the last `window`
/// is over `standingQueue`, the estimate is taken `step` lower, a window at a
/// time, down to `lowestScale`; while under `shortQueue`, a `step` higher, up
/// to `highestScale`.  Paced under the link the queue stays short, and over it
/// the bottleneck's queue stands (1 ms at 1 Gbit/s), so the scale settles
/// where the pace meets the link.
///
/// The least, not the mean: a standing queue delays every acknowledgement,
/// while a busy host takes some of them late whatever the pace.  Paced at
/// 20-40 MB/s on a link carrying 119, the delay sampled every 10 ms read 241 µs
/// at the median and 776 µs at the 90th percentile; the mean of 31 % of the
/// windows was over 400 µs, and took the pace down to `lowestScale` of an
/// estimate that was half the link already.  The least of each window read
/// 42-68 µs at the median paced under the link, 181 µs paced at it.
///
/// Near the link the least alone let the pace swing over it: sampled every
/// 50 ms, the main socket's round trip read 0.06-0.2 ms paced at 115 MB/s,
/// 0.2-0.6 ms at 118 and 0.6-1.1 ms at 121, and a window's least still fell
/// under `shortQueue` at 118 (request p99 1.2-1.7 ms).  So once a window's
/// least has read over `standingMedian` (at the link; far under it the least
/// read 42-68 µs), a window whose median is over it takes the scale down too,
/// but only within two steps of the highest it reached (`peak`).  Not before:
/// far under the link a busy host's late acknowledgements read a median of
/// 241 µs, and the median would stop the estimate's rise.  Not far under the peak: a destination slow to take
/// its pages delays its acknowledgements as a queue would, and the median
/// alone took one run's pace from 116 to its floor of 64 MB/s for 10 s.
/// Within two steps under the scale at which the queue last stood, and one
/// over it, the scale rises by `creep`, not `step`, so that the pace stays near
/// the link without going over it.
///
/// Not with huge pages (`PostcopyHugePageYield`): there the main socket's
/// delay stood over 400 µs even paced at 80 % of the link (the destination
/// slow to take 2 MiB pages, its acknowledgements late), and the correction
/// took the pace down to 70-90 % of the estimate.
public struct LinkEstimateCorrection: Sendable, Equatable {
    /// A window's least queue delay over which the queue is standing.
    public static let standingQueue: Duration = .microseconds(250)
    /// A window's median queue delay over which the queue is standing too
    /// (near the link, once a window's least has read over it).
    public static let standingMedian: Duration = .microseconds(150)
    /// A window's least queue delay under which the estimate may rise.
    public static let shortQueue: Duration = .microseconds(100)
    /// How much one window's correction moves the estimate.
    public static let step = 0.03
    /// How much one window raises it near where the queue last stood (within
    /// two `step`s under that scale, and one over it).
    public static let creep = 0.01
    /// The least share of the estimate the correction goes down to.
    public static let lowestScale = 0.7
    /// The most: precopy's low estimates read 38-85 % of the link (at 130 %
    /// the pace of one run, from an estimate of 63.8 MB/s, stayed at that
    /// bound with the queue short throughout; at 200 %, one from 47 MB/s
    /// stayed at 81-86 MB/s for 19 s on a link carrying about 119).
    public static let highestScale = 3.0
    /// How far back the least looks, and how often the scale may move.
    public static let window: Duration = .milliseconds(100)

    /// The share of the estimate in force (1: the estimate as it was).
    public private(set) var scale = 1.0

    struct Delay: Sendable, Equatable {
        let at: ContinuousClock.Instant
        let delay: Duration
    }
    private var delays: [Delay] = []
    /// When `scale` last moved (or the first delay).
    private var corrected: ContinuousClock.Instant?
    /// The scale at which the queue was last seen standing.
    private var stood: Double?
    /// The highest scale yet.
    private var peak = 1.0
    /// Whether a window's least has been over `standingMedian` yet (the median counts only then).
    private var stoodByLeast = false

    /// `continuing`: the correction in force until a parameter changed; its scale goes on.
    public init(continuing earlier: LinkEstimateCorrection? = nil) {
        if let earlier { (scale, stood, peak, stoodByLeast) = (earlier.scale, earlier.stood, earlier.peak, earlier.stoodByLeast) }
    }

    /// Takes the socket's queue delay `delay` at `now` (nil: not known, no
    /// count); whether `scale` moved.
    public mutating func update(queueDelay delay: Duration?, at now: ContinuousClock.Instant) -> Bool {
        guard let delay else { return false }
        delays.append(Delay(at: now, delay: delay))
        delays.removeAll { $0.at < now - Self.window }
        guard let since = corrected else {
            corrected = now
            return false
        }
        guard now - since >= Self.window else { return false }
        let sorted = delays.map(\.delay).sorted()
        let least = sorted.first ?? .zero, median = sorted.isEmpty ? .zero : sorted[sorted.count / 2]
        let earlier = scale
        // The median takes the scale down only near the highest it reached: a destination
        // slow to acknowledge reads as a queue there too, and must not pull the pace far under the link.
        let nearPeak = scale > peak - 2 * Self.step + 1e-9
        if least > Self.standingMedian { stoodByLeast = true }
        if least > Self.standingQueue || (median > Self.standingMedian && nearPeak && stoodByLeast) {
            scale = max(Self.lowestScale, scale - Self.step)
            if scale < earlier { stood = earlier }
        } else if least < Self.shortQueue {
            let near = stood.map { earlier >= $0 - 2 * Self.step && earlier <= $0 + Self.step } ?? false
            scale = min(Self.highestScale, scale + (near ? Self.creep : Self.step))
            peak = max(peak, scale)
        } else {
            return false
        }
        corrected = now
        return scale != earlier
    }
}
