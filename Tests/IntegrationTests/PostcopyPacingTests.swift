import Testing
@testable import Migration

/// The background's pace after the switch to postcopy.
@Suite struct PostcopyPacingTests {
    typealias Window = PostcopyPacing.Window
    static let unlimited: UInt64 = 100 << 30

    static func busy(_ sent: Double, _ delivery: UInt64, maxBandwidth: UInt64 = unlimited) -> Window {
        Window(sent: sent, delivery: delivery, maxBandwidth: maxBandwidth)
    }

    static func idle(_ sent: Double) -> Window { Window(sent: sent, delivery: nil, maxBandwidth: unlimited) }

    @Test func theLesserOfTheBusyWindowsMedianDeliveryRateAndWhatTheySent() {
        // TCP's samples ran ahead of the link: what the windows sent bounds them.
        let windows = [Self.busy(100e6, 108_000_000), Self.busy(104e6, 250_000_000), Self.busy(102e6, 110_000_000),
                       Self.busy(101e6, 90_000_000), Self.busy(103e6, 112_000_000)]
        #expect(PostcopyPacing.rate(windows, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 91_800_000)
        #expect(PostcopyPacing.rate([Self.busy(100e6, 190_000_000), Self.busy(100e6, 200_000_000)],
                                    maxPostcopyBandwidth: 0, percent: 50, preempt: true) == 50_000_000)
        // Samples under what was sent (it included a burst the link queued): the samples.
        #expect(PostcopyPacing.rate([Self.busy(120e6, 100_000_000), Self.busy(120e6, 104_000_000), Self.busy(118e6, 102_000_000)],
                                    maxPostcopyBandwidth: 0, percent: 95, preempt: true) == 96_900_000)
    }

    @Test func idleWindowsDoNotCountAndTooFewBusyOnesMeanNoPace() {
        // A first pass over zero pages sends little and keeps nothing busy: left out.
        let some = [Self.idle(5e6), Self.busy(100e6, 110_000_000), Self.busy(100e6, 110_000_000), Self.idle(20e6)]
        #expect(PostcopyPacing.rate(some, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 90_000_000)      // the idle windows would have lowered what was sent
        let mostlyIdle = [Self.idle(5e6), Self.idle(8e6), Self.busy(100e6, 110_000_000)]
        #expect(PostcopyPacing.rate(mostlyIdle, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == nil)
        #expect(PostcopyPacing.rate([], maxPostcopyBandwidth: 0, percent: 90, preempt: true) == nil)
    }

    @Test func windowsHeldByTheMaxBandwidthThenInForceDoNotCount() {
        // Precopy at QEMU's default 128 MiB/s: the link's own rate is unknown, even if the limit is lifted later.
        let held = Window(sent: Double(128 << 20) * 0.97, delivery: 150_000_000, maxBandwidth: 128 << 20)
        #expect(held.limited)
        #expect(PostcopyPacing.rate([held, held, held], maxPostcopyBandwidth: 0, percent: 95, preempt: true) == nil)
        // Well under the limit: the link held it.
        let free = Window(sent: 100e6, delivery: 110_000_000, maxBandwidth: 1 << 30)
        #expect(!free.limited)
        #expect(PostcopyPacing.rate([free], maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 90_000_000)
    }

    @Test func withoutAPreemptChannelNothingIsPaced() {
        let windows = [Self.busy(100e6, 110_000_000)]
        #expect(PostcopyPacing.rate(windows, maxPostcopyBandwidth: 0, percent: 95, preempt: false) == nil)
        // max-postcopy-bandwidth is the rate limiter's then: a request on the main channel is never held back.
        #expect(PostcopyPacing.rate(windows, maxPostcopyBandwidth: 50 << 20, percent: 95, preempt: false) == nil)
    }

    /// Delivered counts every 20 ms from `rates` (bytes per second over each interval).
    static func counts(_ rates: [Double], start: ContinuousClock.Instant = .now) -> [PostcopyPacing.Delivered] {
        var bytes: UInt64 = 1 << 20
        var counts = [PostcopyPacing.Delivered(at: start, bytes: bytes)]
        for (index, rate) in rates.enumerated() {
            bytes += UInt64(rate * 0.02)
            counts.append(PostcopyPacing.Delivered(at: start + .milliseconds(20 * (index + 1)), bytes: bytes))
        }
        return counts
    }

    @Test func theEightiethPercentileOfHundredMillisecondStretches() {
        // The link's 119 MB/s while its queue was full; then TCP recovering a loss, the sender
        // scanning zero pages.  Acknowledgements came bunched: single 20 ms intervals read 100
        // and 195 MB/s, which a stretch of 100 ms evens out.
        let full = (0..<30).map { $0 % 5 == 4 ? 195e6 : 100e6 }
        let samples = Self.counts(full + [40e6, 20e6, 0, 0, 10e6, 80e6, 90e6, 100e6])
        let link = try! #require(PostcopyPacing.linkRate(samples))
        #expect(abs(link - 119e6) < 1e6, "\(link)")
        // Precopy's windows sent less than the link carries; TCP's samples ran ahead of it: neither counts.
        let windows = [Self.busy(80e6, 125_000_000), Self.busy(85e6, 70_000_000)]
        let rate = try! #require(PostcopyPacing.rate(windows, linkSamples: samples, maxPostcopyBandwidth: 0, percent: 90, preempt: true))
        #expect(abs(Double(rate) - 107.1e6) < 1e6, "\(rate)")
        // A precopy that kept the link busy only in its last 160 ms: the 80th percentile reads
        // under the link, the 95th (with huge pages) reads it.
        let reachedLate = Self.counts(Array(repeating: 100e6, count: 32) + Array(repeating: 119e6, count: 8))
        let cautious = try! #require(PostcopyPacing.linkRate(reachedLate))
        let upper = try! #require(PostcopyPacing.linkRate(reachedLate, quantile: PostcopyPacing.hugePageQuantile))
        #expect(cautious < 110e6 && abs(upper - 119e6) < 1e6, "\(cautious), \(upper)")
        #expect(PostcopyPacing.rate(windows, linkSamples: reachedLate, maxPostcopyBandwidth: 0, percent: 90, preempt: true,
                                    quantile: PostcopyPacing.hugePageQuantile) == UInt64(upper * 0.9))
        // Too few counts for five stretches (a short precopy): the windows.
        let few = Array(samples.prefix(9))
        #expect(PostcopyPacing.linkRate(few) == nil)
        #expect(PostcopyPacing.rate(windows, linkSamples: few, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 74_250_000)
        // Counts a sampler woke late for: a stretch spans at least 100 ms, however they fall.
        let late = [0, 20, 150, 170, 190, 330, 350, 480, 500, 650].map { PostcopyPacing.Delivered(at: samples[0].at + .milliseconds($0), bytes: UInt64($0) * 100_000) }
        #expect(PostcopyPacing.linkRate(late).map { abs($0 - 100e6) < 1 } == true)
        // Nothing delivered at all: not a rate.
        #expect(PostcopyPacing.linkRate(Self.counts(Array(repeating: 0, count: 30))) == nil)
        // Windows held by max-bandwidth: the counts show the limit, not the link.
        let held = Window(sent: Double(64 << 20), delivery: 70_000_000, maxBandwidth: 64 << 20)
        #expect(PostcopyPacing.rate([held, held], linkSamples: samples, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == nil)
    }

    @Test func maxPostcopyBandwidthIsThePaceWhenSet() {
        #expect(PostcopyPacing.rate([Self.busy(100e6, 110_000_000)], maxPostcopyBandwidth: 50 << 20, percent: 90, preempt: true)
                == 50 << 20)
        #expect(PostcopyPacing.rate([], maxPostcopyBandwidth: 50 << 20, percent: 0, preempt: true) == 50 << 20)
    }

    @Test func offWithZeroPercent() {
        #expect(PostcopyPacing.rate([Self.busy(100e6, 110_000_000)], maxPostcopyBandwidth: 0, percent: 0, preempt: true) == nil)
    }

    @Test func theParameterTakesAPercentage() throws {
        var parameters = MigrationParameters()
        #expect(parameters.postcopyPacing == 95)
        try parameters.set("x-ferry-postcopy-pacing", to: 0)
        #expect(parameters.postcopyPacing == 0)
        #expect(parameters.values.contains { $0.name == "x-ferry-postcopy-pacing" && $0.value == 0 })
        #expect(throws: MigrationError.invalidParameter("Parameter 'x-ferry-postcopy-pacing' expects an integer in the range of 0 to 100")) {
            try parameters.set("x-ferry-postcopy-pacing", to: 101)
        }
    }
}
