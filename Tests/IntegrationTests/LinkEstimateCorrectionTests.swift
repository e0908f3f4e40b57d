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
        // ... up to twice the estimate, however long the queue stays short.
        _ = Self.feed(&correction, delay: .microseconds(60), milliseconds: 6000, at: &now)
        #expect(abs(correction.scale - LinkEstimateCorrection.highestScale) < 1e-9)
        #expect(Self.feed(&correction, delay: .microseconds(60), milliseconds: 500, at: &now) == 0)
    }

    @Test func aStandingQueueTakesItDownToItsBoundAndAQueueBetweenLeavesIt() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        #expect(Self.feed(&correction, delay: .microseconds(180), milliseconds: 1000, at: &now) == 0)
        #expect(correction.scale == 1)
        _ = Self.feed(&correction, delay: .microseconds(900), milliseconds: 5000, at: &now)
        #expect(abs(correction.scale - LinkEstimateCorrection.lowestScale) < 1e-9)
    }

    @Test("the least delay over the window decides: a busy host's late acknowledgements are not a queue, a standing queue delays every one")
    func theLeastDelayOverTheWindowDecides() {
        var correction = LinkEstimateCorrection()
        var now = ContinuousClock.now
        // Alternating 20 µs and 900 µs (a mean of 460): no standing queue.
        for index in 0..<30 {
            now += .milliseconds(10)
            _ = correction.update(queueDelay: .microseconds(index % 2 == 0 ? 20 : 900), at: now)
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
}
