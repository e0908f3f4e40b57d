import Testing
@testable import Migration

/// The background's pace after the switch to postcopy.
@Suite struct PostcopyPacingTests {
    let link = 117e6        // what precopy measured on a 1 Gbit/s link, bytes per second

    @Test func pacedAtThePercentageOfTheMedianOfPrecopysLastWindows() {
        // One window inflated (the socket's buffer filling) does not move the median.
        let windows = [link, link * 3, link * 0.98, link * 1.01, link]       // no delivery-rate samples
        #expect(PostcopyPacing.rate(precopyWindows: windows, maxBandwidth: 100 << 30, maxPostcopyBandwidth: 0, percent: 90)
                == UInt64(link * 0.9))
        #expect(PostcopyPacing.rate(precopyWindows: [100, 300], maxBandwidth: 0, maxPostcopyBandwidth: 0, percent: 50) == 100)
    }

    @Test func tcpsMedianDeliveryRateIsTheLinksRateWithinHeadroomOfWhatWasSent() {
        // Losses kept what the windows sent under the link's rate; TCP's samples see the link.
        let windows = [100e6, 104e6, 102e6]
        #expect(PostcopyPacing.rate(precopyWindows: windows, deliveryRates: [108_000_000, 250_000_000, 110_000_000, 90_000_000, 112_000_000],
                                    maxBandwidth: 100 << 30, maxPostcopyBandwidth: 0, percent: 90) == 99_000_000)
        // Samples far too high (bunched acknowledgements): at most 10 % over what was sent.
        #expect(PostcopyPacing.rate(precopyWindows: [100e6], deliveryRates: [190_000_000, 200_000_000],
                                    maxBandwidth: 100 << 30, maxPostcopyBandwidth: 0, percent: 50) == 55_000_000)
        // Held by max-bandwidth: whatever TCP saw, the link's rate under load is unknown.
        #expect(PostcopyPacing.rate(precopyWindows: [Double(64 << 20)], deliveryRates: [118_000_000],
                                    maxBandwidth: 64 << 20, maxPostcopyBandwidth: 0, percent: 95) == nil)
    }

    @Test func withoutAPreemptChannelOnlyMaxPostcopyBandwidthPaces() {
        #expect(PostcopyPacing.rate(precopyWindows: [link], deliveryRates: [118_000_000], maxBandwidth: 100 << 30,
                                    maxPostcopyBandwidth: 0, percent: 95, preempt: false) == nil)
        #expect(PostcopyPacing.rate(precopyWindows: [link], maxBandwidth: 100 << 30,
                                    maxPostcopyBandwidth: 50 << 20, percent: 95, preempt: false) == 50 << 20)
    }

    @Test func maxPostcopyBandwidthIsThePaceWhenSet() {
        #expect(PostcopyPacing.rate(precopyWindows: [link], maxBandwidth: 100 << 30, maxPostcopyBandwidth: 50 << 20, percent: 90)
                == 50 << 20)
        #expect(PostcopyPacing.rate(precopyWindows: [], maxBandwidth: 0, maxPostcopyBandwidth: 50 << 20, percent: 0) == 50 << 20)
    }

    @Test func notPacedWhenOffUnmeasuredOrHeldByMaxBandwidth() {
        #expect(PostcopyPacing.rate(precopyWindows: [link], maxBandwidth: 100 << 30, maxPostcopyBandwidth: 0, percent: 0) == nil)
        #expect(PostcopyPacing.rate(precopyWindows: [], maxBandwidth: 100 << 30, maxPostcopyBandwidth: 0, percent: 90) == nil)
        // Precopy ran at QEMU's default 128 MiB/s limit: the link's own rate is unknown.
        #expect(PostcopyPacing.rate(precopyWindows: [Double(128 << 20) * 0.97], maxBandwidth: 128 << 20,
                                    maxPostcopyBandwidth: 0, percent: 90) == nil)
        // Well under the limit: the link held it.
        #expect(PostcopyPacing.rate(precopyWindows: [link], maxBandwidth: 1 << 30, maxPostcopyBandwidth: 0, percent: 90)
                == UInt64(link * 0.9))
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
