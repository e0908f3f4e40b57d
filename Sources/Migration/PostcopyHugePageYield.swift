/// Ferry's own: with huge pages, postcopy's background steps aside while a
/// requested page crosses the link.
///
/// A requested 2 MiB page is 17 ms of a 1 Gbit/s link.  Behind a background
/// paced at 95 % of the link it got what the background left and what TCP's
/// losses at the bottleneck won it: request p50 48-100 ms, p99 260-320 ms.
/// While the preempt channel holds at least `start` bytes not yet
/// acknowledged, the background is paced at `share` of its pace; once under
/// `end`, at its pace again.  The return path's reader applies the yield as
/// soon as it has written a requested page (`PrecopySource.yieldToUrgentPage`):
/// left to the background's next look, up to a millisecond at both channels'
/// full pace began every page, and the bottleneck's queue dropped 29-38 000
/// segments a run, against 9-14 000.  The preempt channel is paced at the
/// background's pace less its share (`urgentPace`): unpaced, a requested page left in TCP's slow start at
/// twice what the link took, and the bottleneck's 1 ms queue dropped 100 000
/// to 170 000 segments per run.  With 4 KiB pages the preempt channel rarely
/// holds that much (a request is one page), and `PostcopyBackgroundPace`
/// leaves them their share instead.
public struct PostcopyHugePageYield: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// The background at its pace.
        case flowing
        /// The background at `share` of its pace, a requested page in flight.
        case yielding
    }

    /// The background's pace while no requested page is in flight (`PostcopyPacing.rate`), bytes per second.
    public let pace: UInt64
    /// The share of `pace` the background keeps while yielding: little for the
    /// page, and enough for its next train to leave within a millisecond of its
    /// pace coming back (with `trainBytes`, from a pace of 82 MB/s; under it,
    /// `yieldingPace` keeps a train a millisecond).
    public static let share = 0.05
    /// The background's trains while this rule applies (16 KiB without it,
    /// `RAMMigration.postcopyBurstBytes`).  TCP schedules a paced train's
    /// departure from the one before's length at the pace then in force, and
    /// setting a new pace does not move it: a 16 KiB train at 2 % put the next
    /// 7.7 ms later, longer than the 5-6 ms between two requests, so the
    /// background sent one train every 8 ms throughout, the guest asked for 740
    /// of its 768 huge pages, and the link carried 72 MB/s on average.  A 4 KiB
    /// train at 5 % of 113 MB/s holds the next 0.7 ms.
    public static let trainBytes = 4 << 10
    /// Preempt bytes not yet acknowledged at or above which the background yields
    /// (sixty-four 4 KiB pages, an eighth of a 2 MiB one).
    public static let start: UInt64 = 256 << 10
    /// ... and under which it flows again (about 1 ms of a 1 Gbit/s link, as
    /// long as the background may take to notice).
    public static let end: UInt64 = 128 << 10
    /// How long the background may wait for room in its socket before it looks
    /// again (its socket drains slowly while it yields; a requested page at the
    /// link's rate lasts 17 ms).
    public static let interval: Duration = .milliseconds(1)

    public private(set) var state: State = .flowing
    /// Times the background yielded.
    public private(set) var yields: UInt64 = 0

    /// `continuing`: the rule in force until a parameter changed the pace; its
    /// state and count go on.
    public init(pace: UInt64, continuing earlier: PostcopyHugePageYield? = nil) {
        self.pace = pace
        if let earlier {
            state = earlier.state
            yields = earlier.yields
        }
    }

    /// The background's pace in the current state, bytes per second.
    public var currentPace: UInt64 {
        switch state {
        case .flowing: pace
        case .yielding: yieldingPace
        }
    }

    /// The background's pace while yielding, bytes per second: `share` of
    /// `pace`, and at least a train (`trainBytes`) a millisecond, never over `pace`.
    public var yieldingPace: UInt64 {
        let trainAMillisecond = UInt64(Self.trainBytes) * 1000
        return min(pace, max(UInt64(Double(pace) * Self.share), trainAMillisecond))
    }

    /// The preempt channel's pace, bytes per second: the background's less its
    /// `share`, so that the two together keep to the pace while a page is in
    /// flight (from about 82 MB/s up, where `yieldingPace` is that share; under
    /// it the yielding background keeps a train a millisecond, and the two run
    /// over the pace, at a `max-postcopy-bandwidth` of a few MB/s up to twice
    /// it; never `pace - yieldingPace`, which is 0 there and would stop the
    /// preempt channel).  At the pace each, the pair ran 5 % over it: the bottleneck's
    /// queue dropped 12-18 000 segments a run, against 5-10 000 (6 runs each).
    /// Not lower: at nine tenths of the pace, leaving the background a tenth,
    /// the pages that carried most of the guest's memory took 10 % longer.
    public var urgentPace: UInt64 { pace - UInt64(Double(pace) * Self.share) }

    /// The background's pace for `queued`, the preempt channel's bytes written
    /// and not yet acknowledged; nil when the one applied stands.
    public mutating func update(urgentQueued queued: UInt64) -> UInt64? {
        switch state {
        case .flowing where queued >= Self.start:
            state = .yielding
            yields += 1
            return yieldingPace
        case .yielding where queued < Self.end:
            state = .flowing
            return pace
        case .flowing, .yielding:
            return nil
        }
    }
}
