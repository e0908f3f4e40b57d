/// The tunables of a migration, with QEMU's names, units and defaults
/// (`migrate-set-parameters` / `query-migrate-parameters`).
public struct MigrationParameters: Equatable, Sendable {
    /// Bytes per second the stream may use while the guest runs (QEMU's default: 128 MiB/s).
    /// The switchover itself is not limited, as in QEMU.
    public var maxBandwidth: UInt64 = 128 << 20
    /// Bandwidth assumed for the switchover decision when non-zero, else the measured one.
    public var availSwitchoverBandwidth: UInt64 = 0
    /// The longest pause the guest should see, in milliseconds.
    public var downtimeLimit: UInt64 = 300
    /// Auto-converge: first throttle percentage, step, and ceiling.
    public var cpuThrottleInitial: UInt8 = 20
    public var cpuThrottleIncrement: UInt8 = 10
    public var maxCPUThrottle: UInt8 = 99
    /// Auto-converge starts throttling when the pages dirtied in a period exceed
    /// this percentage of the bytes sent in it, twice in a row.
    public var throttleTriggerThreshold: UInt8 = 50
    /// Ferry's own (`x-inactivity-limit`, ms): a destination that receives
    /// nothing for this long fails the migration instead of waiting forever
    /// for a source that went silent.  0: wait forever.
    public var inactivityLimit: UInt64 = 60_000

    public init() {}

    /// QEMU's bounds, checked before a value is taken.
    public static let maximumDowntimeLimit: UInt64 = 2_000_000
    public static let maximumBandwidth: UInt64 = UInt64(Int64.max)

    /// The parameters Ferry honours, by QEMU name.
    public static let names = ["max-bandwidth", "avail-switchover-bandwidth", "downtime-limit", "cpu-throttle-initial",
                               "cpu-throttle-increment", "max-cpu-throttle", "throttle-trigger-threshold", "x-inactivity-limit"]

    /// Sets one parameter from an integer, with QEMU's range checks and error texts.
    public mutating func set(_ name: String, to value: Int64) throws(MigrationError) {
        func percent(_ range: ClosedRange<Int64>) throws(MigrationError) -> UInt8 {
            guard range.contains(value) else {
                throw .invalidParameter("Parameter '\(name)' expects an integer in the range of \(range.lowerBound) to \(range.upperBound)")
            }
            return UInt8(value)
        }
        switch name {
        case "max-bandwidth", "avail-switchover-bandwidth":
            guard value >= 0 else {
                throw .invalidParameter("Parameter '\(name)' expects an integer in the range of 0 to \(Self.maximumBandwidth) bytes/second")
            }
            if name == "max-bandwidth" { maxBandwidth = UInt64(value) } else { availSwitchoverBandwidth = UInt64(value) }
        case "downtime-limit":
            guard value >= 0, UInt64(value) <= Self.maximumDowntimeLimit else {
                throw .invalidParameter("Parameter 'downtime_limit' expects an integer in the range of 0 to \(Self.maximumDowntimeLimit) ms")
            }
            downtimeLimit = UInt64(value)
        case "cpu-throttle-initial": cpuThrottleInitial = try percent(1...99)
        case "cpu-throttle-increment": cpuThrottleIncrement = try percent(1...99)
        case "max-cpu-throttle": maxCPUThrottle = try percent(1...99)
        case "throttle-trigger-threshold": throttleTriggerThreshold = try percent(1...100)
        case "x-inactivity-limit":
            guard value >= 0, UInt64(value) <= Self.maximumDowntimeLimit * 1000 else {
                throw .invalidParameter("Parameter 'x-inactivity-limit' expects an integer in the range of 0 to \(Self.maximumDowntimeLimit * 1000) ms")
            }
            inactivityLimit = UInt64(value)
        default: throw .invalidParameter("Parameter '\(name)' is unexpected")
        }
    }

    /// Every parameter Ferry honours with its value, by QEMU name.
    public var values: [(name: String, value: UInt64)] {
        [("max-bandwidth", maxBandwidth), ("avail-switchover-bandwidth", availSwitchoverBandwidth),
         ("downtime-limit", downtimeLimit), ("cpu-throttle-initial", UInt64(cpuThrottleInitial)),
         ("cpu-throttle-increment", UInt64(cpuThrottleIncrement)), ("max-cpu-throttle", UInt64(maxCPUThrottle)),
         ("throttle-trigger-threshold", UInt64(throttleTriggerThreshold)), ("x-inactivity-limit", inactivityLimit)]
    }
}

/// Migration capabilities with QEMU's names (`migrate-set-capabilities`).
public struct MigrationCapabilities: Equatable, Sendable {
    /// Throttle the vCPUs when the guest dirties memory faster than the link sends it.
    public var autoConverge = false
    /// `MIGRATION` events on every status change.  On by default in Ferry
    /// (QEMU's default is off); clients that do not want them may turn them off.
    public var events = true

    public init() {}

    /// Capabilities Ferry implements.  `return-path` is always on: on sockets the
    /// destination always confirms (or refuses) the stream.
    public static let supported = ["auto-converge", "events", "return-path"]
    /// QEMU 10's other capabilities: listed as off; enabling one is refused, naming it.
    public static let unsupported = ["xbzrle", "rdma-pin-all", "zero-blocks", "postcopy-ram", "x-colo", "release-ram",
                                     "pause-before-switchover", "multifd", "dirty-bitmaps",
                                     "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid",
                                     "background-snapshot", "zero-copy-send", "postcopy-preempt", "switchover-ack",
                                     "dirty-limit", "mapped-ram"]

    public mutating func set(_ name: String, to enabled: Bool) throws(MigrationError) {
        switch name {
        case "auto-converge": autoConverge = enabled
        case "events": events = enabled
        case "return-path":
            if !enabled { throw .invalidParameter("Capability 'return-path' cannot be turned off: Ferry always confirms a migration on the return path") }
        case _ where Self.unsupported.contains(name):
            if enabled { throw .invalidParameter("Capability '\(name)' is not supported by Ferry") }
        default: throw .invalidParameter("Parameter 'capability' does not accept value '\(name)'")
        }
    }

    public var states: [(name: String, enabled: Bool)] {
        [("auto-converge", autoConverge), ("events", events), ("return-path", true)] + Self.unsupported.map { ($0, false) }
    }
}
