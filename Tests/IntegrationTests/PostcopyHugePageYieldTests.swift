import Testing
@testable import Migration

/// Postcopy's background stepping aside while a requested huge page crosses the link.
@Suite struct PostcopyHugePageYieldTests {
    static let pace: UInt64 = 113_000_000

    /// The preempt channel's unacknowledged bytes as a 2 MiB page leaves at
    /// `rate` bytes per second, looked at every millisecond: the paces applied.
    static func send(_ yield: inout PostcopyHugePageYield, bytes: UInt64, rate: UInt64) -> [UInt64] {
        var applied: [UInt64] = []
        var queued = bytes
        while true {
            if let new = yield.update(urgentQueued: queued) { applied.append(new) }
            guard queued > 0 else { return applied }
            queued -= min(queued, rate / 1000)
        }
    }

    @Test func aRequestedHugePageMakesTheBackgroundYieldUntilItIsAcknowledged() {
        var yield = PostcopyHugePageYield(pace: Self.pace)
        #expect(yield.state == .flowing)
        #expect(yield.yieldingPace == 5_650_000)
        #expect(yield.urgentPace == Self.pace - 5_650_000, "the two together at the pace")
        #expect(Self.send(&yield, bytes: 2 << 20, rate: 107_000_000) == [5_650_000, Self.pace])
        #expect(yield.state == .flowing)
        #expect(yield.yields == 1)
        // A second page, then a third: one yield each.
        #expect(Self.send(&yield, bytes: 2 << 20, rate: 107_000_000) == [5_650_000, Self.pace])
        #expect(Self.send(&yield, bytes: 2 << 20, rate: 107_000_000) == [5_650_000, Self.pace])
        #expect(yield.yields == 3)
    }

    @Test func smallRequestsLeaveTheBackgroundAtItsPace() {
        var yield = PostcopyHugePageYield(pace: Self.pace)
        // Up to sixty-three 4 KiB pages at once, and the frames' headers.
        for queued: UInt64 in [0, 4096, 4096 * 15 + 64, 60 << 10, 255 << 10, 0] {
            #expect(yield.update(urgentQueued: queued) == nil, "\(queued)")
        }
        #expect(yield.state == .flowing)
        #expect(yield.yields == 0)
    }

    @Test func itFlowsAgainOnlyOnceAboutAMillisecondOfThePageIsLeft() {
        var yield = PostcopyHugePageYield(pace: Self.pace)
        #expect(yield.update(urgentQueued: 256 << 10) == 5_650_000)
        // Between the bounds nothing changes, whichever way the count goes.
        for queued: UInt64 in [2 << 20, 1 << 20, 200 << 10, 128 << 10, 300 << 10, 128 << 10] {
            #expect(yield.update(urgentQueued: queued) == nil, "\(queued)")
            #expect(yield.state == .yielding)
        }
        #expect(yield.update(urgentQueued: (128 << 10) - 1) == Self.pace)
        #expect(yield.state == .flowing)
        #expect(yield.update(urgentQueued: 200 << 10) == nil)
    }

    @Test func aNewPaceKeepsTheStateAndTheCount() {
        var yield = PostcopyHugePageYield(pace: Self.pace)
        #expect(yield.currentPace == Self.pace)
        #expect(yield.update(urgentQueued: 2 << 20) == 5_650_000)
        #expect(yield.currentPace == 5_650_000)
        // A parameter changed the pace while a page is in flight: still yielding, at the new pace's share.
        var changed = PostcopyHugePageYield(pace: 50_000_000, continuing: yield)
        #expect(changed.state == .yielding && changed.yields == 1)
        #expect(changed.currentPace == 4_096_000)
        #expect(changed.urgentPace == 47_500_000)
        #expect(changed.update(urgentQueued: 1 << 20) == nil)
        #expect(changed.update(urgentQueued: 0) == 50_000_000)
        #expect(changed.currentPace == 50_000_000)
        // Without an earlier rule (the switch, a recovery): flowing, none counted.
        let fresh = PostcopyHugePageYield(pace: 50_000_000, continuing: nil)
        #expect(fresh.state == .flowing && fresh.yields == 0)
    }

    @Test func underATrainAMillisecondThereIsNothingToYield() {
        var yield = PostcopyHugePageYield(pace: 3_000_000)
        #expect(yield.yieldingPace == 3_000_000)
        #expect(yield.urgentPace == 2_850_000)
        #expect(yield.update(urgentQueued: 1 << 30) == 3_000_000)
        #expect(yield.yields == 1)
    }

    /// TCP schedules a paced train's departure from the one before at the pace
    /// then in force: the background's trains while it yields must not hold it
    /// back for long once its pace is back (16 KiB at 2 % held it 7.7 ms, longer
    /// than the time between two requests), at a 1 Gbit/s link's pace or at a
    /// `max-postcopy-bandwidth` of a few MB/s.
    @Test func aYieldingTrainHoldsTheNextForAMillisecondAtMost() {
        for pace: UInt64 in [4_200_000, 20_000_000, 90_000_000, 113_000_000, 125_000_000, 1_250_000_000] {
            let yield = PostcopyHugePageYield(pace: pace)
            let held = Double(PostcopyHugePageYield.trainBytes) / Double(yield.yieldingPace)
            #expect(held <= 0.001, "\(pace): \(held) s")
            #expect(yield.yieldingPace < pace)
        }
        // At 20 MB/s, a train a millisecond is a fifth of the pace, over `share`.
        #expect(PostcopyHugePageYield(pace: 20_000_000).yieldingPace == 4_096_000)
    }

}
