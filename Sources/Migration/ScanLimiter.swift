/// How a background snapshot shares its stream between pages the guest is
/// waiting for (write faults) and the linear scan (Ferry's parameter
/// `x-ferry-snapshot-limiter`).
public enum SnapshotLimiterMode: String, Sendable, CaseIterable {
    /// The scan runs whenever no faulted page waits.
    case off
    /// Andrey Gruzdev's proposal (QEMU patch "Introduced simple linear scan rate
    /// limiting mechanism for write tracking migration", 2020, never merged):
    /// when a write fault took longer than the threshold, the next pages come
    /// only from faults, polling for them between pages.
    case seed
    /// Ferry's own: the scan rate is adjusted every window so that the 99th
    /// percentile of write-fault latency holds a target.
    case latency
}

/// The limiter's settings (Ferry's `x-ferry-snapshot-*` parameters).
public struct SnapshotLimiterSettings: Equatable, Sendable {
    public var mode: SnapshotLimiterMode = .seed
    /// Seed: a fault slower than this starts a fault-only run (the seed's 5 ms).
    public var faultThreshold: Duration = .milliseconds(5)
    /// Seed: how many pages a fault-only run lasts (the seed's 200).
    public var faultOnlyPages = 200
    /// Seed: how long each step of a fault-only run waits for a fault (the seed's 5 ms).
    public var poll: Duration = .milliseconds(5)
    /// Latency mode: the 99th percentile of write-fault latency to hold.
    public var targetLatency: Duration = .milliseconds(1)
    public init() {}
}

/// Decides, step by step, whether the snapshot's writer may scan.  Pure: fed
/// the fault latencies and the pages written, asked before each scan step;
/// the writer owns it.
///
/// Seed mode, as the proposal's text describes it: a write fault that took
/// longer than `faultThreshold` starts (or restarts) a fault-only run of
/// `faultOnlyPages` steps.  During it the writer takes pages only from
/// faults; each faulted page written is a step, and so is each `poll` spent
/// waiting for a fault that did not come (so a guest that stops writing holds
/// the scan back for at most `faultOnlyPages` × `poll`, 1 s with the seed's
/// numbers; the proposal does not say, and this is Ferry's reading).
///
/// Latency mode: every `window` the latencies recorded in it give a 99th
/// percentile; above the target the scan rate halves (not below
/// `minimumScanRate`), under half the target (or with no faults) it grows by
/// a quarter, up to unlimited.
struct ScanLimiter {
    enum State: Equatable {
        case scanning
        case faultOnly(remaining: Int)
    }

    let settings: SnapshotLimiterSettings
    private(set) var state = State.scanning
    /// Fault-only runs started (seed).
    private(set) var faultOnlyRuns = 0
    /// Latency mode: bytes per second the scan may use; nil: unlimited.
    private(set) var scanRate: Double?
    private var windowStart: ContinuousClock.Instant
    private var windowLatencies: [Duration] = []
    private var windowScanned = 0

    static let window: Duration = .milliseconds(100)
    static let minimumScanRate: Double = 8 * 1024 * 1024

    init(_ settings: SnapshotLimiterSettings, now: ContinuousClock.Instant) {
        self.settings = settings
        windowStart = now
    }

    /// A write fault was resolved in `latency`.
    mutating func faultResolved(latency: Duration) {
        switch settings.mode {
        case .off: break
        case .seed:
            if latency > settings.faultThreshold {
                if state == .scanning { faultOnlyRuns += 1 }
                state = .faultOnly(remaining: settings.faultOnlyPages)
            }
        case .latency:
            windowLatencies.append(latency)
        }
    }

    /// `pages` faulted pages were written (steps of a fault-only run).
    mutating func faultedPagesWritten(_ pages: Int) { step(pages) }

    /// A fault-only step waited `poll` and no fault came.
    mutating func pollTimedOut() { step(1) }

    private mutating func step(_ count: Int) {
        guard case .faultOnly(let remaining) = state else { return }
        state = remaining - count > 0 ? .faultOnly(remaining: remaining - count) : .scanning
    }

    /// The scan wrote `bytes`.
    mutating func scanned(bytes: Int) { windowScanned += bytes }

    /// Whether the scan may take its next step now.
    mutating func mayScan(now: ContinuousClock.Instant) -> Bool {
        switch settings.mode {
        case .off: return true
        case .seed: return state == .scanning
        case .latency:
            endWindowIfDue(now: now)
            guard let rate = scanRate else { return true }
            let elapsed = Self.seconds(now - windowStart)
            return Double(windowScanned) < rate * max(elapsed, 0.001)
        }
    }

    /// How long the writer waits for a fault when it may not scan.
    var pollTimeout: Duration {
        settings.mode == .seed ? settings.poll : .milliseconds(1)
    }

    private mutating func endWindowIfDue(now: ContinuousClock.Instant) {
        let elapsed = now - windowStart
        guard elapsed >= Self.window else { return }
        let measured = Double(windowScanned) / Self.seconds(elapsed)
        let target = settings.targetLatency
        let p99 = Self.percentile99(windowLatencies)
        if let p99, p99 > target {
            // Too slow for the guest: halve what the scan used (or was allowed).
            let base = min(scanRate ?? .infinity, max(measured, Self.minimumScanRate))
            scanRate = max(Self.minimumScanRate, base / 2)
        } else if p99 == nil || p99! * 2 <= target, let rate = scanRate {
            let next = rate * 1.25
            scanRate = next > 64 * Double(1 << 30) ? nil : next
        }
        windowStart = now
        windowLatencies.removeAll(keepingCapacity: true)
        windowScanned = 0
    }

    /// The 99th percentile of `latencies` (nearest rank), nil when empty.
    static func percentile99(_ latencies: [Duration]) -> Duration? {
        guard !latencies.isEmpty else { return nil }
        let sorted = latencies.sorted()
        let rank = Int((Double(sorted.count) * 0.99).rounded(.up)) - 1
        return sorted[max(0, min(rank, sorted.count - 1))]
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

extension ScanLimiter {
    /// What `query-migrate` shows of the limiter.
    struct Snapshot: Equatable, Sendable {
        var faultOnlyRuns = 0
        var scanRate: Double?
        var throttling = false
    }

    var snapshotState: Snapshot {
        let throttling = if case .faultOnly = state { true } else { scanRate != nil }
        return Snapshot(faultOnlyRuns: faultOnlyRuns, scanRate: scanRate, throttling: throttling)
    }
}
