import Testing
@testable import Migration

/// Postcopy's background leaving the requested pages their share of the link.
@Suite struct PostcopyBackgroundPaceTests {
    static let link: UInt64 = 120_000_000

    /// Counts of the preempt channel's bytes every 10 ms at `rate` bytes per second, from `bytes`.
    static func feed(_ pace: inout PostcopyBackgroundPace, rate: Double, milliseconds: Int, from start: ContinuousClock.Instant,
                     bytes: inout UInt64, at now: inout ContinuousClock.Instant, delay: Duration? = nil) -> [UInt64] {
        var applied: [UInt64] = []
        for _ in 0..<(milliseconds / 10) {
            now += .milliseconds(10)
            bytes += UInt64(rate / 100)
            if let new = pace.update(urgentBytes: bytes, queueDelay: delay, at: now) { applied.append(new) }
        }
        return applied
    }

    @Test func fewRequestsLeaveThePercentPace() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        #expect(pace.most == 114_000_000)
        #expect(pace.applied == pace.most)
        var now = ContinuousClock.now, bytes: UInt64 = 0
        // 3 MB/s of requested pages: under the 5 % the percent leaves them.
        #expect(Self.feed(&pace, rate: 3e6, milliseconds: 500, from: now, bytes: &bytes, at: &now).isEmpty)
        #expect(pace.applied == 114_000_000)
    }

    @Test func moreRequestsTakeTheirShareFromTheBackground() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now, bytes: UInt64 = 0
        let applied = Self.feed(&pace, rate: 20e6, milliseconds: 300, from: now, bytes: &bytes, at: &now)
        #expect(!applied.isEmpty)
        #expect(abs(Double(pace.applied) - 100e6) < 1.5e6, "\(pace.applied)")
        // The requests stop: within the window plus an interval the background has its pace back.
        _ = Self.feed(&pace, rate: 0, milliseconds: 120, from: now, bytes: &bytes, at: &now)
        #expect(pace.applied == pace.most)
    }

    @Test func theBackgroundKeepsHalfTheLinkWhateverTheRequests() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now, bytes: UInt64 = 0
        _ = Self.feed(&pace, rate: 200e6, milliseconds: 300, from: now, bytes: &bytes, at: &now)
        #expect(pace.applied == 60_000_000)
    }

    @Test func countsCloserThanTheIntervalAndSmallChangesApplyNothing() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link)
        let start = ContinuousClock.now
        #expect(pace.update(urgentBytes: 0, at: start) == nil)
        // 5 ms later: ignored, however much was sent.
        #expect(pace.update(urgentBytes: 50_000_000, at: start + .milliseconds(5)) == nil)
        // 10 ms, 6000 bytes: 0.6 MB/s, under 1 % of the pace.
        #expect(pace.update(urgentBytes: 6_000, at: start + .milliseconds(10)) == nil)
        #expect(pace.applied == Self.link)
        // 20 ms, 60 kB in all: 3 MB/s, 2.5 %.
        #expect(pace.update(urgentBytes: 60_000, at: start + .milliseconds(20)) == 117_000_000)
    }

    @Test func aNewChannelCountingFromZeroStartsAfresh() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now, bytes: UInt64 = 0
        _ = Self.feed(&pace, rate: 30e6, milliseconds: 200, from: now, bytes: &bytes, at: &now)
        #expect(pace.applied < 95_000_000)
        // A recovery's new preempt channel: its count is not read as a huge negative rate.
        now += .milliseconds(10)
        #expect(pace.update(urgentBytes: 0, at: now) == nil)
        bytes = 0
        _ = Self.feed(&pace, rate: 0, milliseconds: 50, from: now, bytes: &bytes, at: &now)
        #expect(pace.applied == pace.most)
    }

    /// Counts every 10 ms for `milliseconds` with no requests and the main channel's queue delay `delay`.
    static func queue(_ pace: inout PostcopyBackgroundPace, delay: Duration?, milliseconds: Int,
                      at now: inout ContinuousClock.Instant) {
        for _ in 0..<(milliseconds / 10) {
            now += .milliseconds(10)
            _ = pace.update(urgentBytes: 0, queueDelay: delay, at: now)
        }
    }

    @Test func aStandingQueueTakesTheEstimateDownAWindowAtATimeAndAShortOneBringsItBack() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now
        #expect(pace.update(urgentBytes: 0, queueDelay: .microseconds(900), at: now) == nil)
        // A least and a median under the standing queue, over the short one: nothing moves.
        Self.queue(&pace, delay: .microseconds(120), milliseconds: 500, at: &now)
        #expect(pace.scale == 1 && pace.applied == 114_000_000)
        // A queue of about 1 ms (the bottleneck's whole queue): 3 % of the estimate a window,
        // once a whole window has seen it.
        Self.queue(&pace, delay: .microseconds(900), milliseconds: 200, at: &now)
        #expect(abs(pace.scale - 0.97) < 1e-9)
        #expect(abs(Double(pace.applied) - 110.58e6) < 10)
        Self.queue(&pace, delay: .microseconds(900), milliseconds: 200, at: &now)
        #expect(abs(pace.scale - 0.91) < 1e-9)
        // ... never under 70 % of it.
        Self.queue(&pace, delay: .microseconds(900), milliseconds: 3000, at: &now)
        #expect(abs(pace.scale - 0.7) < 1e-9)
        #expect(abs(Double(pace.applied) - 79.8e6) < 10)
        // A short queue: back up a creep a window near where the queue last stood (0.73;
        // two or three in 300 ms), a step a window past it, and past the estimate (it may
        // have read under the link), up to three times it.
        Self.queue(&pace, delay: .microseconds(60), milliseconds: 300, at: &now)
        #expect(pace.scale > 0.71 && pace.scale < 0.735, "\(pace.scale)")
        Self.queue(&pace, delay: .microseconds(60), milliseconds: 1000, at: &now)
        #expect(pace.scale > 0.85 && pace.scale < 1, "\(pace.scale)")
        Self.queue(&pace, delay: .microseconds(60), milliseconds: 8000, at: &now)
        #expect(abs(pace.scale - 3) < 1e-9)
        #expect(abs(Double(pace.applied) - 342e6) <= 342e6 * PostcopyBackgroundPace.hysteresis)   // 2.99 to 3: under the hysteresis
    }

    @Test func theCorrectionAndTheRequestsShareTogether() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now, bytes: UInt64 = 0
        Self.queue(&pace, delay: .microseconds(900), milliseconds: 230, at: &now)
        #expect(abs(pace.scale - 0.94) < 1e-9)
        // 20 MB/s of requests, the queue between the bounds: the corrected link (112.8 MB/s) less them.
        _ = Self.feed(&pace, rate: 20e6, milliseconds: 100, from: now, bytes: &bytes, at: &now, delay: .microseconds(250))
        #expect(abs(pace.scale - 0.94) < 1e-9)
        #expect(abs(Double(pace.applied) - 92.8e6) < 0.3e6, "\(pace.applied)")
    }

    @Test func aNewPercentKeepsTheCorrection() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now
        Self.queue(&pace, delay: .microseconds(900), milliseconds: 230, at: &now)
        #expect(abs(pace.scale - 0.94) < 1e-9)
        // x-ferry-postcopy-pacing set to 90 in postcopy: the estimate stays corrected.
        var changed = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 90, continuing: pace)
        #expect(abs(changed.scale - 0.94) < 1e-9)
        #expect(abs(Double(changed.applied) - 108e6 * 0.94) < 10)      // applied at once
        Self.queue(&changed, delay: .microseconds(250), milliseconds: 50, at: &now)
        #expect(abs(Double(changed.applied) - 108e6 * 0.94) < 10)
        #expect(PostcopyBackgroundPace(link: Self.link, most: Self.link, continuing: nil).scale == 1)
    }

    @Test func noQueueDelayLeavesTheEstimate() {
        var pace = PostcopyBackgroundPace(link: Self.link, most: Self.link / 100 * 95)
        var now = ContinuousClock.now
        Self.queue(&pace, delay: nil, milliseconds: 1000, at: &now)
        #expect(pace.scale == 1 && pace.applied == 114_000_000)
    }
}
