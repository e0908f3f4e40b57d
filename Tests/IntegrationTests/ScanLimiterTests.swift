import Testing
@testable import Migration

/// The background snapshot's scan limiter and page map on their own, fed
/// recorded fault timings: no KVM, no I/O.
@Suite struct ScanLimiterTests {
    let start = ContinuousClock.now

    func seed(_ change: (inout SnapshotLimiterSettings) -> Void = { _ in }) -> ScanLimiter {
        var settings = SnapshotLimiterSettings()
        settings.mode = .seed
        change(&settings)
        return ScanLimiter(settings, now: start)
    }

    @Test("seed: a fault over 5 ms starts 200 fault-only pages; 5 ms or less does not; the run ends after exactly 200 steps")
    func seedEntersAndLeaves() {
        var limiter = seed()
        limiter.faultResolved(latency: .milliseconds(5))
        let may1 = limiter.mayScan(now: start)
        #expect(may1 && limiter.state == .scanning)
        limiter.faultResolved(latency: .microseconds(5001))
        let may2 = limiter.mayScan(now: start)
        #expect(!may2)
        #expect(limiter.state == .faultOnly(remaining: 200) && limiter.faultOnlyRuns == 1)
        #expect(limiter.pollTimeout == .milliseconds(5))
        limiter.faultedPagesWritten(150)
        #expect(limiter.state == .faultOnly(remaining: 50))
        for _ in 0..<49 { limiter.pollTimedOut() }
        let may3 = limiter.mayScan(now: start)
        #expect(!may3)
        limiter.pollTimedOut()
        let may4 = limiter.mayScan(now: start)
        #expect(may4 && limiter.state == .scanning)
    }

    @Test("seed: a slow fault during a run restarts the count without counting a new run; fast ones change nothing")
    func seedRestarts() {
        var limiter = seed()
        limiter.faultResolved(latency: .milliseconds(9))
        limiter.faultedPagesWritten(120)
        limiter.faultResolved(latency: .microseconds(300))
        #expect(limiter.state == .faultOnly(remaining: 80))
        limiter.faultResolved(latency: .milliseconds(6))
        #expect(limiter.state == .faultOnly(remaining: 200) && limiter.faultOnlyRuns == 1)
        limiter.faultedPagesWritten(512)        // a huge page's worth ends it at once
        #expect(limiter.state == .scanning)
        limiter.faultResolved(latency: .milliseconds(6))
        #expect(limiter.faultOnlyRuns == 2)
    }

    @Test("seed's numbers are parameters: threshold, run length")
    func seedParameters() {
        var limiter = seed { $0.faultThreshold = .milliseconds(1); $0.faultOnlyPages = 3 }
        limiter.faultResolved(latency: .microseconds(1500))
        #expect(limiter.state == .faultOnly(remaining: 3))
        limiter.faultedPagesWritten(3)
        #expect(limiter.state == .scanning)
    }

    @Test("off: the scan always may; faults are only recorded")
    func off() {
        var settings = SnapshotLimiterSettings()
        settings.mode = .off
        var limiter = ScanLimiter(settings, now: start)
        limiter.faultResolved(latency: .seconds(1))
        let may5 = limiter.mayScan(now: start)
        #expect(may5)
    }

    @Test("latency: a window whose p99 breaks the target halves the scan rate; quiet windows raise it again to unlimited")
    func latencyMode() {
        var settings = SnapshotLimiterSettings()
        settings.mode = .latency
        settings.targetLatency = .milliseconds(1)
        var limiter = ScanLimiter(settings, now: start)
        // Window 1: 100 MB scanned in 100 ms (1 GB/s), two faults of 100, one of 3 ms: p99 3 ms.
        limiter.scanned(bytes: 100_000_000)
        for latency in [Duration.microseconds(100), .microseconds(100), .milliseconds(3)] { limiter.faultResolved(latency: latency) }
        let may6 = limiter.mayScan(now: start + .milliseconds(50))
        #expect(may6)      // no limit yet
        _ = limiter.mayScan(now: start + .milliseconds(100))
        let halved = limiter.scanRate ?? 0
        #expect(abs(halved - 500_000_000) < 1)
        // Within the next window the scan may use 500 MB/s: 40 MB after 50 ms is over.
        limiter.scanned(bytes: 40_000_000)
        let may7 = limiter.mayScan(now: start + .milliseconds(150))
        #expect(!may7)
        let may8 = limiter.mayScan(now: start + .milliseconds(181))
        #expect(may8)
        // Quiet windows: +25 % each, until unlimited.
        var now = start + .milliseconds(200)
        var rates: [Double] = []
        while let rate = limiter.scanRate, rates.count < 100 {
            rates.append(rate)
            now += .milliseconds(100)
            _ = limiter.mayScan(now: now)
        }
        #expect(limiter.scanRate == nil)
        #expect(zip(rates, rates.dropFirst()).allSatisfy { abs($1 - $0 * 1.25) < 1 })
    }

    @Test("latency: the scan rate never goes under the floor, however slow faults get")
    func latencyFloor() {
        var settings = SnapshotLimiterSettings()
        settings.mode = .latency
        var limiter = ScanLimiter(settings, now: start)
        var now = start
        for _ in 0..<40 {
            limiter.faultResolved(latency: .milliseconds(50))
            now += .milliseconds(100)
            _ = limiter.mayScan(now: now)
        }
        #expect(limiter.scanRate == ScanLimiter.minimumScanRate)
    }

    @Test("p99 is the nearest rank")
    func percentile() {
        #expect(ScanLimiter.percentile99([]) == nil)
        let hundred = (1...100).map { Duration.microseconds($0) }
        #expect(ScanLimiter.percentile99(hundred) == .microseconds(99))
        #expect(ScanLimiter.percentile99([.microseconds(7)]) == .microseconds(7))
    }

    @Test("page map: each unit is claimed once, by a fault or the scan; the scan runs in order across blocks")
    func pageMap() {
        var map = SnapshotPageMap(blockBytes: [8 * 4096, 4 << 21], unitBytes: [4096, 2 << 20])
        #expect(map.unitCount == 12 && map.unclaimedCount == 12 && map.unclaimedBytes == 8 * 4096 + (4 << 21))
        #expect(map.claimFault(block: 0, offset: 3 * 4096 + 17) == .claimed)
        #expect(map.claimFault(block: 0, offset: 3 * 4096) == .inFlight)      // claimed, not finished
        map.finish(block: 0, unit: 3)
        #expect(map.claimFault(block: 0, offset: 3 * 4096) == .done)
        // The scan skips the faulted unit and stops at it: runs are consecutive.
        let first = map.claimScan(maxBytes: 1 << 20)
        #expect(first?.block == 0 && first?.unit == 0 && first?.count == 3)
        let second = map.claimScan(maxBytes: 2 * 4096)
        #expect(second?.block == 0 && second?.unit == 4 && second?.count == 2)
        #expect(map.claimFault(block: 1, offset: (2 << 21) + 4096) == .claimed)   // a huge page by any of its bytes
        var runs: [(Int, Int, Int)] = []
        while let run = map.claimScan(maxBytes: 1 << 20) { runs.append((run.block, run.unit, run.count)) }
        #expect(runs.map { "\($0)" } == ["(0, 6, 2)", "(1, 0, 1)", "(1, 1, 1)", "(1, 3, 1)"])
        #expect(map.unclaimedCount == 0 && map.unclaimedBytes == 0 && !map.isComplete)
        map.finish(block: 0, unit: 0, count: 3)
        map.finish(block: 0, unit: 4, count: 4)
        map.finish(block: 1, unit: 0, count: 4)
        #expect(map.isComplete)
    }
}
