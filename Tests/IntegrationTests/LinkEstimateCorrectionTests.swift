import Testing
@testable import Migration

/// Precopy's link estimate corrected in postcopy by the main socket's queue delay.
@Suite struct LinkEstimateCorrectionTests {
    /// Delays every 10 ms for `milliseconds`; how many times the scale moved.
    static func feed(_ correction: inout LinkEstimateCorrection, delay: Duration?, milliseconds: Int,
                     at now: inout ContinuousClock.Instant) -> Int {
        var moves = 0
        for _ in 0..<(milliseconds / 10) {
            now += .milliseconds(10)
            if correction.update(queueDelay: delay, at: now) { moves += 1 }
        }
        return moves
    }

    @Test func anEstimateUnderTheLinkRisesAStepAWindowUpToItsBound() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        // 60 µs of queue: the pace is under the link.  One step a 100 ms window.
        #expect(Self.feed(&correction, delay: .microseconds(60), milliseconds: 500, at: &now) == 4)
        #expect(abs(correction.scale - 1.12) < 1e-9)
        // ... up to three times the estimate, however long the queue stays short.
        _ = Self.feed(&correction, delay: .microseconds(60), milliseconds: 8000, at: &now)
        #expect(abs(correction.scale - LinkEstimateCorrection.highestScale) < 1e-9)
        #expect(Self.feed(&correction, delay: .microseconds(60), milliseconds: 500, at: &now) == 0)
    }

    @Test func aStandingQueueTakesItDownToItsBoundAndAQueueBetweenLeavesIt() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        // Between the short queue and the standing one (least and median alike): nothing moves.
        #expect(Self.feed(&correction, delay: .microseconds(120), milliseconds: 1000, at: &now) == 0)
        #expect(correction.scale == 1)
        _ = Self.feed(&correction, delay: .microseconds(900), milliseconds: 5000, at: &now)
        #expect(abs(correction.scale - LinkEstimateCorrection.lowestScale) < 1e-9)
    }

    @Test("the least delay over the window decides: a busy host's late acknowledgements are not a queue, a standing queue delays every one")
    func theLeastDelayOverTheWindowDecides() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        // A busy host's late acknowledgements, as sampled paced at a third of the link (241 µs
        // at the median, 776 at the 90th percentile; a mean of 340): no standing queue.
        let busy: [Int64] = [40, 240, 240, 900, 240, 60, 240, 776, 241, 240]
        for index in 0..<30 {
            now += .milliseconds(10)
            _ = correction.update(queueDelay: .microseconds(busy[index % busy.count]), at: now)
        }
        #expect(correction.scale > 1)
        // 300-900 µs throughout: a standing queue.
        let raised = correction.scale
        for index in 0..<30 {
            now += .milliseconds(10)
            _ = correction.update(queueDelay: .microseconds(index % 2 == 0 ? 300 : 900), at: now)
        }
        #expect(correction.scale < raised)
    }

    @Test func noDelayKnownLeavesTheEstimateAndACorrectionCarriesOver() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        #expect(Self.feed(&correction, delay: nil, milliseconds: 1000, at: &now) == 0)
        #expect(correction.scale == 1)
        _ = Self.feed(&correction, delay: .microseconds(60), milliseconds: 250, at: &now)
        let raised = correction.scale
        #expect(raised > 1)
        #expect(LinkEstimateCorrection(continuing: correction).scale == raised)
        #expect(LinkEstimateCorrection(continuing: nil).scale == 1)
    }

    /// The main socket's delay paced at the link: swinging between 80 and 900 µs, mostly over 300.
    static let swinging: [Int64] = [80, 400, 600, 900, 500, 350, 700, 820, 90, 450]

    static func swing(_ correction: inout LinkEstimateCorrection, milliseconds: Int, at now: inout ContinuousClock.Instant) -> Int {
        var moves = 0
        for index in 0..<(milliseconds / 10) {
            now += .milliseconds(10)
            if correction.update(queueDelay: .microseconds(swinging[index % swinging.count]), at: now) { moves += 1 }
        }
        return moves
    }

    /// A correction after `milliseconds` of a short queue, and the time it was last fed.
    static func risen(for milliseconds: Int) -> (LinkEstimateCorrection, ContinuousClock.Instant) {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        _ = feed(&correction, delay: .microseconds(60), milliseconds: milliseconds, at: &now)
        return (correction, now)
    }

    @Test("once a least has read over the bound, a median over it takes the scale down near its peak, and there it rises a creep at a time")
    func aQueueStandingAtTheMedianTakesItDownAndItCreepsBackNearThere() {
        var (correction, now) = Self.risen(for: 300)
        #expect(abs(correction.scale - 1.06) < 1e-9)
        // The first window still short (up to 1.09), the next standing: down a step.
        #expect(Self.feed(&correction, delay: .microseconds(900), milliseconds: 110, at: &now) == 2)
        #expect(abs(correction.scale - 1.06) < 1e-9)
        // Short again: up a creep a window while within two steps under where it stood (1.09) ...
        #expect(Self.feed(&correction, delay: .microseconds(60), milliseconds: 300, at: &now) == 3)
        #expect(abs(correction.scale - 1.09) < 1e-9)
        // ... and down where the median stands, though the least is short.
        _ = Self.swing(&correction, milliseconds: 200, at: &now)
        #expect(correction.scale < 1.09)
    }

    @Test("before a least has read over the bound, the median does not count: a busy host's late acknowledgements must not stop the rise")
    func beforeTheLeastShowsAQueueTheMedianDoesNotCount() {
        var (correction, now) = Self.risen(for: 300)
        let raised = correction.scale
        _ = Self.swing(&correction, milliseconds: 500, at: &now)
        #expect(correction.scale > raised)
    }

    @Test("far under its peak a median over the bound leaves the scale: a slow destination's late acknowledgements are not the link's queue")
    func farUnderItsPeakTheMedianLeavesTheScale() {
        var (correction, now) = Self.risen(for: 500)
        #expect(abs(correction.scale - 1.12) < 1e-9)
        // A standing queue (the least over 250 µs) takes it down anywhere.
        _ = Self.feed(&correction, delay: .microseconds(900), milliseconds: 600, at: &now)
        let low = correction.scale
        #expect(low < 1.04)
        // Swinging for a second: never lower than that.
        _ = Self.swing(&correction, milliseconds: 1000, at: &now)
        #expect(correction.scale >= low)
    }
}
