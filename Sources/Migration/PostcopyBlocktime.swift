/// How long the destination's vCPUs waited for pages in postcopy: QEMU's
/// `postcopy-blocktime` statistics (capability `postcopy-blocktime`), with
/// QEMU 10.1's latency figures.  Pure: its owner holds a lock, and gives it
/// each fault that waits on a page still to come (with the faulting thread's
/// vCPU, or nil for any other thread) and each unit as it is placed.
///
/// - A vCPU is blocked from its first waiting fault until the last unit it
///   waits on is placed; its blocked time adds up in `vcpuBlocktime`.
/// - `blocktime` is the time all vCPUs were blocked at once (the guest made
///   no progress at all), counted each time the last of them is freed.
/// - Every fault's latency (fault to placement) goes in `latencyBuckets`:
///   bucket N holds [2^N, 2^(N+1)) µs, the last one everything above.
struct PostcopyBlocktime: Sendable {
    struct UnitKey: Hashable, Sendable { let block: Int, unit: Int }
    struct Waiter: Sendable {
        let vcpu: Int?
        let since: ContinuousClock.Instant
    }

    static let bucketCount = 24
    let vcpuCount: Int
    /// Faults waiting, per unit.
    private var waiting: [UnitKey: [Waiter]] = [:]
    /// Faults outstanding per vCPU.
    private var outstanding: [Int]
    private var vcpusDown = 0
    /// When the last vCPU went down, while all are.
    private var allDownSince: ContinuousClock.Instant?
    private(set) var blocktime: Duration = .zero
    private(set) var vcpuBlocktime: [Duration]
    private(set) var vcpuFaults: [UInt64]
    private(set) var nonVCPUTime: Duration = .zero
    private(set) var nonVCPUFaults: UInt64 = 0
    private(set) var latencyBuckets = [UInt64](repeating: 0, count: PostcopyBlocktime.bucketCount)

    init(vcpuCount: Int) {
        self.vcpuCount = vcpuCount
        outstanding = Array(repeating: 0, count: vcpuCount)
        vcpuBlocktime = Array(repeating: .zero, count: vcpuCount)
        vcpuFaults = Array(repeating: 0, count: vcpuCount)
    }

    /// A fault on `unit` of `block` that waits for a page to come.
    mutating func fault(block: Int, unit: Int, vcpu: Int?, at now: ContinuousClock.Instant) {
        let vcpu = vcpu.flatMap { $0 >= 0 && $0 < vcpuCount ? $0 : nil }
        waiting[UnitKey(block: block, unit: unit), default: []].append(Waiter(vcpu: vcpu, since: now))
        guard let vcpu else {
            nonVCPUFaults += 1
            return
        }
        vcpuFaults[vcpu] += 1
        outstanding[vcpu] += 1
        if outstanding[vcpu] == 1 {
            vcpusDown += 1
            if vcpusDown == vcpuCount { allDownSince = now }
        }
    }

    /// `unit` of `block` is placed: the faults waiting on it end.
    mutating func placed(block: Int, unit: Int, at now: ContinuousClock.Instant) {
        guard let waiters = waiting.removeValue(forKey: UnitKey(block: block, unit: unit)) else { return }
        var freed = false
        for waiter in waiters {
            let waited = now - waiter.since
            latencyBuckets[Self.bucket(waited)] += 1
            guard let vcpu = waiter.vcpu else {
                nonVCPUTime += waited
                continue
            }
            vcpuBlocktime[vcpu] += waited
            outstanding[vcpu] -= 1
            if outstanding[vcpu] == 0 { freed = true }
        }
        guard freed else { return }
        if let since = allDownSince {
            blocktime += now - since
            allDownSince = nil
        }
        vcpusDown = outstanding.filter { $0 > 0 }.count
    }

    /// The bucket of a latency: N for [2^N, 2^(N+1)) µs, 0 below 2 µs, the last above.
    static func bucket(_ latency: Duration) -> Int {
        let micros = UInt64(max(0, latency.components.seconds)) * 1_000_000 + UInt64(max(0, latency.components.attoseconds)) / 1_000_000_000_000
        guard micros > 0 else { return 0 }
        return min(63 - micros.leadingZeroBitCount, bucketCount - 1)
    }

    /// The figures for `query-migrate`, QEMU's units: blocktimes in ms, latencies in ns.
    var report: PostcopyBlocktimeReport {
        let vcpuFaultTotal = vcpuFaults.reduce(0, +)
        let allTime = vcpuBlocktime.reduce(nonVCPUTime, +)
        return PostcopyBlocktimeReport(
            blocktime: Self.milliseconds(blocktime),
            vcpuBlocktime: vcpuBlocktime.map(Self.milliseconds),
            latency: Self.average(allTime, vcpuFaultTotal + nonVCPUFaults),
            latencyDistribution: latencyBuckets,
            vcpuLatency: zip(vcpuBlocktime, vcpuFaults).map { Self.average($0, $1) },
            nonVCPULatency: Self.average(nonVCPUTime, nonVCPUFaults))
    }

    static func milliseconds(_ duration: Duration) -> UInt32 {
        UInt32(clamping: max(0, duration.components.seconds) * 1000 + max(0, duration.components.attoseconds) / 1_000_000_000_000_000)
    }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        UInt64(max(0, duration.components.seconds)) * 1_000_000_000 + UInt64(max(0, duration.components.attoseconds)) / 1_000_000_000
    }

    static func average(_ total: Duration, _ count: UInt64) -> UInt64 { count == 0 ? 0 : nanoseconds(total) / count }
}

/// `postcopy-blocktime` and QEMU 10.1's latency figures, QEMU's units.
public struct PostcopyBlocktimeReport: Equatable, Sendable {
    /// Milliseconds every vCPU was blocked at once (`postcopy-blocktime`).
    public var blocktime: UInt32
    /// Milliseconds each vCPU was blocked (`postcopy-vcpu-blocktime`).
    public var vcpuBlocktime: [UInt32]
    /// Nanoseconds from a fault to its page, on average, every thread (`postcopy-latency`).
    public var latency: UInt64
    /// Faults per latency bucket: N holds [2^N, 2^(N+1)) µs (`postcopy-latency-dist`).
    public var latencyDistribution: [UInt64]
    /// Per vCPU (`postcopy-vcpu-latency`), nanoseconds.
    public var vcpuLatency: [UInt64]
    /// Faults of threads that are not vCPUs (`postcopy-non-vcpu-latency`), nanoseconds.
    public var nonVCPULatency: UInt64
}
