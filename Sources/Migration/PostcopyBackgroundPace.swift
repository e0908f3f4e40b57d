import DequeModule

/// Ferry's own: postcopy's background pace, leaving the requested pages their
/// share of the link.
///
/// Requested pages on the preempt channel cross the same bottleneck as the
/// background: a guest that faults 2500 times a second asks for about 10 MB/s,
/// 8 % of a 1 Gbit/s link.  The background paced at `x-ferry-postcopy-pacing` percent of the link
/// leaves them that much; when they take more (measured over the last
/// `window`), the background gives up what they take, so that the two together
/// stay within the link and its bottleneck's queue stays short.  It never goes
/// below `minimumShare` of the link, however many requests come.
///
/// The link is precopy's estimate as `LinkEstimateCorrection` corrects it by
/// the main socket's queue delay.
public struct PostcopyBackgroundPace: Sendable, Equatable {
    /// The link's rate as precopy estimated it, bytes per second (`PostcopyPacing.link`).
    public let link: UInt64
    /// The background's pace while requests take less than the rest (`PostcopyPacing.rate`).
    public let most: UInt64
    /// The estimate's correction by the main socket's queue delay.
    public private(set) var correction: LinkEstimateCorrection
    /// The share of `link` and `most` in force (1: the estimate as it was).
    public var scale: Double { correction.scale }
    /// How far back the requested pages' rate looks.
    public static let window: Duration = .milliseconds(100)
    /// How often a new count is taken (updates between are ignored).
    public static let interval: Duration = .milliseconds(10)
    /// The least share of the link the background keeps.
    public static let minimumShare = 0.5
    /// A new pace is applied only when it differs from the applied one by more than this share.
    public static let hysteresis = 0.01

    struct Mark: Sendable, Equatable {
        let at: ContinuousClock.Instant
        let bytes: UInt64
    }
    private var marks: Deque<Mark> = []
    /// The pace last returned by `update`.
    public private(set) var applied: UInt64

    /// At most `most`, the pace `PostcopyPacing.rate` gave (`x-ferry-postcopy-pacing` percent of `link`).
    /// `continuing`: the pace in force until a parameter changed; its correction of the estimate goes on.
    public init(link: UInt64, most: UInt64, continuing earlier: PostcopyBackgroundPace? = nil) {
        self.link = link
        self.most = most
        correction = LinkEstimateCorrection(continuing: earlier?.correction)
        applied = UInt64(Double(most) * correction.scale)
    }

    /// The background's pace for the preempt channel's byte count `urgentBytes`
    /// and the main channel's queue delay `queueDelay` (nil: not known) at
    /// `now`; nil when the applied one stands.
    public mutating func update(urgentBytes: UInt64, queueDelay: Duration? = nil, at now: ContinuousClock.Instant) -> UInt64? {
        if let last = marks.last {
            // A new channel (after a recovery) counts from zero again.
            if urgentBytes < last.bytes { marks.removeAll() }
            else if now - last.at < Self.interval { return nil }
        }
        marks.append(Mark(at: now, bytes: urgentBytes))
        while marks.count > 2, marks[1].at <= now - Self.window { marks.removeFirst() }
        guard let first = marks.first, now > first.at else { return nil }
        _ = correction.update(queueDelay: queueDelay, at: now)
        let urgentRate = Double(urgentBytes - first.bytes) / PrecopySource.seconds(now - first.at)
        let link = Double(self.link) * scale
        let floor = link * Self.minimumShare
        let pace = UInt64(max(floor, min(Double(most) * scale, link - urgentRate)))
        let change = pace > applied ? pace - applied : applied - pace
        guard Double(change) > Double(applied) * Self.hysteresis else { return nil }
        applied = pace
        return pace
    }
}
