import EmbeddedGuest
import Synchronization

/// What the VMM knows of the guest's progress, from its heartbeats.
public struct GuestProgress: Sendable {
    public struct CPU: Sendable {
        public var last: HeartbeatRecord?
        public var heartbeats = 0
        public var lastHeartbeatAt: ContinuousClock.Instant?
        /// The longest host-time gap between two heartbeats of this vCPU while it was meant to run.
        public var maxGap: Duration = .zero
    }

    public var cpus: [CPU]
    public var firstHeartbeatAt: ContinuousClock.Instant?
    public var panicVector: UInt32?

    init(cpuCount: Int) { cpus = Array(repeating: CPU(), count: cpuCount) }

    public var heartbeats: Int { cpus.reduce(0) { $0 + $1.heartbeats } }
    // The guest's own numbers: summed saturating, so a guest that reports absurd ones cannot trap the VMM.
    public var pagesWritten: UInt64 { Self.sum(cpus.map { $0.last?.pagesWritten ?? 0 }) }
    public var verifyErrors: UInt64 { Self.sum(cpus.map { $0.last?.verifyErrors ?? 0 }) }
    public var timerTicks: UInt64 { Self.sum(cpus.map { $0.last?.timerTicks ?? 0 }) }

    static func sum(_ values: [UInt64]) -> UInt64 {
        values.reduce(0) { total, value in
            let (sum, overflow) = total.addingReportingOverflow(value)
            return overflow ? .max : sum
        }
    }
    public var maxGap: Duration { cpus.map(\.maxGap).max() ?? .zero }
    /// The lowest heartbeat count of any vCPU: a vCPU that stopped beating holds this back.
    public var minimumHeartbeats: Int { cpus.map(\.heartbeats).min() ?? 0 }

    mutating func record(_ heartbeat: HeartbeatRecord, at now: ContinuousClock.Instant) {
        guard heartbeat.cpu < cpus.count else { return }
        if firstHeartbeatAt == nil { firstHeartbeatAt = now }
        var cpu = cpus[heartbeat.cpu]
        if let previous = cpu.lastHeartbeatAt { cpu.maxGap = max(cpu.maxGap, now - previous) }
        cpu.lastHeartbeatAt = now
        cpu.last = heartbeat
        cpu.heartbeats += 1
        cpus[heartbeat.cpu] = cpu
    }

    /// Forget the last beat times, so a deliberate pause is not counted as a gap.
    mutating func forgetLastBeats() {
        for i in cpus.indices { cpus[i].lastHeartbeatAt = nil }
    }
}

/// The progress, shared between vCPU threads (writers) and observers.
final class GuestProgressTracker: Sendable {
    let state: Mutex<GuestProgress>
    init(cpuCount: Int) { state = Mutex(GuestProgress(cpuCount: cpuCount)) }
    var snapshot: GuestProgress { state.withLock { $0 } }
}
