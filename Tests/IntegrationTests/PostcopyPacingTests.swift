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

    @Test func theLinkSamplesEightiethPercentileWhenThereAreEnough() {
        // 20 ms samples: the link's 119 MB/s while its queue was full, dips while TCP
        // recovered a loss or the sender scanned zero pages, two bunched acknowledgements.
        let samples = Array(repeating: 119e6, count: 20) + [40e6, 60e6, 0, 80e6, 90e6, 100e6] + [150e6, 170e6]
        #expect(PostcopyPacing.linkRate(samples) == 119e6)
        // Precopy's windows sent less than the link carries; TCP's samples ran ahead of it.
        let windows = [Self.busy(80e6, 125_000_000), Self.busy(85e6, 130_000_000)]
        #expect(PostcopyPacing.rate(windows, linkSamples: samples, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 107_100_000)
        // TCP's samples under the short ones' percentile bound it.
        let under = [Self.busy(80e6, 100_000_000), Self.busy(85e6, 110_000_000)]
        #expect(PostcopyPacing.rate(under, linkSamples: samples, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 94_500_000)
        // Too few samples (a short precopy): the windows.
        let few = Array(samples.prefix(PostcopyPacing.minimumLinkSamples - 1))
        #expect(PostcopyPacing.linkRate(few) == nil)
        #expect(PostcopyPacing.rate(windows, linkSamples: few, maxPostcopyBandwidth: 0, percent: 90, preempt: true) == 74_250_000)
        // Nothing acknowledged at all: not a rate.
        #expect(PostcopyPacing.linkRate(Array(repeating: 0, count: 30)) == nil)
        // Windows held by max-bandwidth: the samples show the limit, not the link.
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
