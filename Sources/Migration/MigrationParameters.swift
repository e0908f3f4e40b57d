/// The tunables of a migration, with QEMU's names, units and defaults
/// (`migrate-set-parameters` / `query-migrate-parameters`).
public struct MigrationParameters: Equatable, Sendable {
    /// Bytes per second the stream may use while the guest runs (QEMU's default: 128 MiB/s).
    /// The switchover itself is not limited, as in QEMU.
    public var maxBandwidth: UInt64 = 128 << 20
    /// QEMU's `max-postcopy-bandwidth`: bytes per second after the switch to
    /// postcopy (0, the default: unlimited).  Requested pages count against it too.
    public var maxPostcopyBandwidth: UInt64 = 0
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
    /// Multifd: parallel page channels (QEMU's default 2).  Read when a
    /// migration starts: a change during one applies to the next, as in QEMU.
    public var multifdChannels: UInt8 = 2
    public var multifdCompression: MultifdCompression = .none
    /// zstd's level for `multifd-compression: zstd` (QEMU's default 1).
    public var multifdZstdLevel: UInt8 = 1
    public var zeroPageDetection: ZeroPageDetection = .multifd
    /// QEMU's `direct-io`: page data of a mapped-ram file through an O_DIRECT
    /// descriptor.  As in QEMU it takes effect with `mapped-ram` and `multifd`;
    /// otherwise the migration says it is ignored.
    public var directIO = false
    /// Ferry's own `x-ferry-postcopy-pacing`: after the switch to postcopy, the
    /// background pages leave at this percentage of the rate precopy measured,
    /// so requested pages do not queue behind them at the link's bottleneck
    /// (`PostcopyPacing`).  0: not paced (as QEMU).
    public var postcopyPacing: UInt8 = 95
    /// Ferry's own `x-ferry-snapshot-*`: how a background snapshot's scan
    /// yields to pages the guest waits for (`ScanLimiter`).
    public var snapshotLimiter = SnapshotLimiterSettings()

    public init() {}

    /// QEMU's bounds, checked before a value is taken.
    public static let maximumDowntimeLimit: UInt64 = 2_000_000

    /// The parameters Ferry honours, by QEMU name.
    public static let names = ["max-bandwidth", "avail-switchover-bandwidth", "max-postcopy-bandwidth", "downtime-limit", "cpu-throttle-initial",
                               "cpu-throttle-increment", "max-cpu-throttle", "throttle-trigger-threshold", "x-inactivity-limit",
                               "multifd-channels", "multifd-zstd-level", "x-ferry-postcopy-pacing"] + snapshotNames + textNames + booleanNames
    /// Ferry's background-snapshot limiter settings, in microseconds and pages.
    public static let snapshotNames = ["x-ferry-snapshot-fault-threshold", "x-ferry-snapshot-fault-only-pages",
                                       "x-ferry-snapshot-poll", "x-ferry-snapshot-target-latency"]
    /// The parameters whose values are names, not integers.
    public static let textNames = ["multifd-compression", "zero-page-detection", "x-ferry-snapshot-limiter"]
    /// The parameters whose values are booleans.
    public static let booleanNames = ["direct-io"]

    /// Sets a boolean parameter (`direct-io`).
    public mutating func set(_ name: String, flag: Bool) throws(MigrationError) {
        switch name {
        case "direct-io": directIO = flag
        default: throw Self.wrongType(name)
        }
    }

    /// Every boolean parameter, by QEMU name.
    public var booleanValues: [(name: String, value: Bool)] { [("direct-io", directIO)] }

    /// Sets a parameter whose value is a name (`multifd-compression`, `zero-page-detection`).
    public mutating func set(_ name: String, text: String) throws(MigrationError) {
        switch name {
        case "multifd-compression":
            guard let value = MultifdCompression(rawValue: text) else {
                if MultifdCompression.qemuOnly.contains(text) {
                    throw .invalidParameter("multifd-compression '\(text)' is not supported by Ferry (it has none and zstd)")
                }
                throw .invalidParameter("Parameter 'multifd-compression' does not accept value '\(text)'")
            }
            multifdCompression = value
        case "zero-page-detection":
            guard let value = ZeroPageDetection(rawValue: text) else {
                throw .invalidParameter("Parameter 'zero-page-detection' does not accept value '\(text)'")
            }
            zeroPageDetection = value
        case "x-ferry-snapshot-limiter":
            guard let value = SnapshotLimiterMode(rawValue: text) else {
                throw .invalidParameter("Parameter 'x-ferry-snapshot-limiter' does not accept value '\(text)' (off, seed or latency)")
            }
            snapshotLimiter.mode = value
        default: throw Self.wrongType(name)
        }
    }

    static let maxCPUThrottleRange = MigrationError.invalidParameter(
        "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99")

    /// QEMU's checks across parameters (`migrate_params_check`), on the values a
    /// `migrate-set-parameters` would leave: auto-converge's first step is
    /// `cpu-throttle-initial`, so `max-cpu-throttle` may not be under it.
    public func check() throws(MigrationError) {
        if maxCPUThrottle < cpuThrottleInitial { throw Self.maxCPUThrottleRange }
    }

    /// QEMU's QAPI type of each integer parameter narrower than `uint64` (the
    /// sizes and times are `uint64`): a value past it is refused by QEMU's input
    /// visitor, in its words, before any range check.
    static let narrowIntegers: [String: (maximum: UInt64, type: String)] = [
        "cpu-throttle-initial": (255, "uint8_t"), "cpu-throttle-increment": (255, "uint8_t"),
        "max-cpu-throttle": (255, "uint8_t"), "throttle-trigger-threshold": (255, "uint8_t"),
        "multifd-channels": (255, "uint8_t"), "multifd-zstd-level": (255, "uint8_t")]

    /// What QEMU says of a value of the wrong type for `name` (or of a name it
    /// does not have): an integer parameter "expects uint64" whatever it got.
    public static func wrongType(_ name: String) -> MigrationError {
        if textNames.contains(name) { return .invalidParameter("Invalid parameter type for '\(name)', expected: string") }
        if booleanNames.contains(name) { return .invalidParameter("Invalid parameter type for '\(name)', expected: boolean") }
        if names.contains(name) { return .invalidParameter("Parameter '\(name)' expects uint64") }
        return .invalidParameter("Parameter '\(name)' is unexpected")
    }

    /// Sets one parameter from an integer as QEMU's input visitor reads a
    /// `uint64` (a negative number is taken as its two's complement, which
    /// QEMU keeps "for backward compatibility"), with QEMU's width and range
    /// checks and error texts (`migrate_params_check` names the parameter with underscores).
    public mutating func set(_ name: String, to value: Int64) throws(MigrationError) {
        try set(name, unsigned: UInt64(bitPattern: value))
    }

    /// The same from an integer above `Int64.max`.
    public mutating func set(_ name: String, unsigned value: UInt64) throws(MigrationError) {
        if let narrow = Self.narrowIntegers[name], value > narrow.maximum {
            throw .invalidParameter("Parameter '\(name)' expects \(narrow.type)")
        }
        func percent(_ qemuName: String, _ range: ClosedRange<UInt64>) throws(MigrationError) -> UInt8 {
            guard range.contains(value) else {
                throw .invalidParameter("Parameter '\(qemuName)' expects an integer in the range of \(range.lowerBound) to \(range.upperBound)")
            }
            return UInt8(value)
        }
        switch name {
        // Any uint64: QEMU's bound is SIZE_MAX.
        case "max-bandwidth": maxBandwidth = value
        case "max-postcopy-bandwidth": maxPostcopyBandwidth = value
        case "avail-switchover-bandwidth": availSwitchoverBandwidth = value
        case "downtime-limit":
            guard value <= Self.maximumDowntimeLimit else {
                throw .invalidParameter("Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms")
            }
            downtimeLimit = value
        case "cpu-throttle-initial": cpuThrottleInitial = try percent("cpu_throttle_initial", 1...99)
        case "cpu-throttle-increment": cpuThrottleIncrement = try percent("cpu_throttle_increment", 1...99)
        case "max-cpu-throttle":
            // And at least cpu-throttle-initial (`check`), in the same words.
            guard value <= 99 else { throw Self.maxCPUThrottleRange }
            maxCPUThrottle = UInt8(value)
        case "throttle-trigger-threshold": throttleTriggerThreshold = try percent("throttle_trigger_threshold", 1...100)
        case "x-ferry-postcopy-pacing": postcopyPacing = try percent("x-ferry-postcopy-pacing", 0...100)
        case "x-inactivity-limit":
            guard value <= Self.maximumDowntimeLimit * 1000 else {
                throw .invalidParameter("Parameter 'x-inactivity-limit' expects an integer in the range of 0 to \(Self.maximumDowntimeLimit * 1000) ms")
            }
            inactivityLimit = value
        case "multifd-channels":
            guard value >= 1 else {
                throw .invalidParameter("Parameter 'multifd_channels' expects a value between 1 and 255")
            }
            multifdChannels = UInt8(value)
        case "multifd-zstd-level":
            guard value <= 20 else {
                throw .invalidParameter("Parameter 'multifd_zstd_level' expects a value between 0 and 20")
            }
            multifdZstdLevel = UInt8(value)
        case "x-ferry-snapshot-fault-threshold", "x-ferry-snapshot-poll", "x-ferry-snapshot-target-latency":
            // Microseconds, from 1 µs to 10 s.
            guard (1...10_000_000).contains(value) else {
                throw .invalidParameter("Parameter '\(name)' expects an integer in the range of 1 to 10000000 microseconds")
            }
            let duration = Duration.microseconds(Int64(value))
            switch name {
            case "x-ferry-snapshot-fault-threshold": snapshotLimiter.faultThreshold = duration
            case "x-ferry-snapshot-poll": snapshotLimiter.poll = duration
            default: snapshotLimiter.targetLatency = duration
            }
        case "x-ferry-snapshot-fault-only-pages":
            guard (1...1_000_000).contains(value) else {
                throw .invalidParameter("Parameter 'x-ferry-snapshot-fault-only-pages' expects an integer in the range of 1 to 1000000")
            }
            snapshotLimiter.faultOnlyPages = Int(value)
        default: throw Self.wrongType(name)
        }
    }

    /// Every integer parameter Ferry honours with its value, by QEMU name.
    public var values: [(name: String, value: UInt64)] {
        [("max-bandwidth", maxBandwidth), ("avail-switchover-bandwidth", availSwitchoverBandwidth),
         ("max-postcopy-bandwidth", maxPostcopyBandwidth),
         ("downtime-limit", downtimeLimit), ("cpu-throttle-initial", UInt64(cpuThrottleInitial)),
         ("cpu-throttle-increment", UInt64(cpuThrottleIncrement)), ("max-cpu-throttle", UInt64(maxCPUThrottle)),
         ("throttle-trigger-threshold", UInt64(throttleTriggerThreshold)), ("x-inactivity-limit", inactivityLimit),
         ("multifd-channels", UInt64(multifdChannels)), ("multifd-zstd-level", UInt64(multifdZstdLevel)),
         ("x-ferry-postcopy-pacing", UInt64(postcopyPacing)),
         ("x-ferry-snapshot-fault-threshold", Self.microseconds(snapshotLimiter.faultThreshold)),
         ("x-ferry-snapshot-fault-only-pages", UInt64(snapshotLimiter.faultOnlyPages)),
         ("x-ferry-snapshot-poll", Self.microseconds(snapshotLimiter.poll)),
         ("x-ferry-snapshot-target-latency", Self.microseconds(snapshotLimiter.targetLatency))]
    }

    static func microseconds(_ duration: Duration) -> UInt64 {
        UInt64(max(0, duration.components.seconds * 1_000_000 + duration.components.attoseconds / 1_000_000_000_000))
    }

    /// Every parameter whose value is a name, by QEMU name.
    public var textValues: [(name: String, value: String)] {
        [("multifd-compression", multifdCompression.rawValue), ("zero-page-detection", zeroPageDetection.rawValue),
         ("x-ferry-snapshot-limiter", snapshotLimiter.mode.rawValue)]
    }
}

/// QEMU's `multifd-compression`, as far as Ferry has it.
public enum MultifdCompression: String, Sendable, CaseIterable {
    case none
    case zstd
    /// QEMU's other methods: named in the refusal.
    static let qemuOnly = ["zlib", "qatzip", "qpl", "uadk"]
}

/// Migration capabilities with QEMU's names (`migrate-set-capabilities`).
public struct MigrationCapabilities: Equatable, Sendable {
    /// Throttle the vCPUs when the guest dirties memory faster than the link sends it.
    public var autoConverge = false
    /// `MIGRATION` events on every status change.  On by default in Ferry
    /// (QEMU's default is off); clients that do not want them may turn them off.
    public var events = true
    /// Pages on `multifd-channels` parallel channels.
    public var multifd = false
    /// Pages sent with `MSG_ZEROCOPY` (multifd without compression only).
    public var zeroCopySend = false
    /// Every page at a fixed offset of a `file:` target (QEMU's mapped-ram).
    public var mappedRAM = false
    /// Ferry's own `x-ferry-incremental`: after a completed mapped-ram save,
    /// dirty tracking stays on, and the next save into the same file writes
    /// only the pages changed since.
    public var incremental = false
    /// Ferry's own `x-ferry-lazy-restore`: a destination restoring a mapped-ram
    /// file starts its guest once the device state is loaded, and its memory is
    /// read from the file as the guest touches it and in the background.
    public var lazyRestore = false
    /// QEMU's `background-snapshot`: the VM saved as it was when the migration
    /// started, the guest running on (userfaultfd write protection, no dirty log).
    public var backgroundSnapshot = false
    /// QEMU's `postcopy-ram`: `migrate-start-postcopy` may switch a running
    /// migration to postcopy (the destination runs the guest and asks for pages).
    public var postcopyRAM = false
    /// QEMU's `postcopy-preempt`: after the switch, requested pages travel on a
    /// channel of their own (`postcopy-preempt`), never behind background pages.
    public var postcopyPreempt = false
    /// QEMU's `postcopy-blocktime` (on the destination): how long its vCPUs
    /// waited for pages, with QEMU 10.1's latency figures, in `query-migrate`.
    public var postcopyBlocktime = false

    public init() {}

    /// Capabilities Ferry implements.  `return-path` is always on: on sockets the
    /// destination always confirms (or refuses) the stream.
    public static let supported = ["auto-converge", "events", "return-path", "multifd", "zero-copy-send", "mapped-ram",
                                   "x-ferry-incremental", "x-ferry-lazy-restore", "background-snapshot", "postcopy-ram", "postcopy-preempt",
                                   "postcopy-blocktime"]
    /// QEMU 10's other capabilities: listed as off; enabling one is refused, naming it.
    public static let unsupported = ["xbzrle", "rdma-pin-all", "zero-blocks", "x-colo", "release-ram",
                                     "pause-before-switchover", "dirty-bitmaps",
                                     "late-block-activate", "x-ignore-shared", "validate-uuid",
                                     "switchover-ack",
                                     "dirty-limit"]

    public mutating func set(_ name: String, to enabled: Bool) throws(MigrationError) {
        switch name {
        case "auto-converge": autoConverge = enabled
        case "events": events = enabled
        case "multifd": multifd = enabled
        case "zero-copy-send": zeroCopySend = enabled
        case "mapped-ram": mappedRAM = enabled
        case "x-ferry-incremental": incremental = enabled
        case "x-ferry-lazy-restore": lazyRestore = enabled
        case "background-snapshot": backgroundSnapshot = enabled
        case "postcopy-ram": postcopyRAM = enabled
        case "postcopy-preempt": postcopyPreempt = enabled
        case "postcopy-blocktime": postcopyBlocktime = enabled
        case "return-path":
            if !enabled { throw .invalidParameter("Capability 'return-path' cannot be turned off: Ferry always confirms a migration on the return path") }
        case _ where Self.unsupported.contains(name):
            if enabled { throw .invalidParameter("Capability '\(name)' is not supported by Ferry") }
        default: throw .invalidParameter("Parameter 'capability' does not accept value '\(name)'")
        }
    }

    public var states: [(name: String, enabled: Bool)] {
        [("auto-converge", autoConverge), ("events", events), ("return-path", true), ("multifd", multifd),
         ("zero-copy-send", zeroCopySend), ("mapped-ram", mappedRAM), ("x-ferry-incremental", incremental),
         ("x-ferry-lazy-restore", lazyRestore), ("background-snapshot", backgroundSnapshot), ("postcopy-ram", postcopyRAM), ("postcopy-preempt", postcopyPreempt),
         ("postcopy-blocktime", postcopyBlocktime)]
            + Self.unsupported.map { ($0, false) }
    }

    /// QEMU's checks across capabilities and parameters (`migrate_caps_check`), with its texts.
    public func check(with parameters: MigrationParameters) throws(MigrationError) {
        if zeroCopySend && (!multifd || parameters.multifdCompression != .none) {
            throw .invalidParameter("Zero copy only available for non-compressed non-TLS multifd migration")
        }
        if mappedRAM && zeroCopySend {
            throw .invalidParameter("Zero copy is not available with mapped-ram: its pages go to a file, not a socket")
        }
        if incremental && !mappedRAM {
            throw .invalidParameter("Capability 'x-ferry-incremental' requires 'mapped-ram'")
        }
        if postcopyPreempt && !postcopyRAM { throw .invalidParameter("Postcopy preempt requires postcopy-ram") }
        if postcopyRAM {
            // QEMU 10.0's texts (10.1 allows postcopy with multifd).
            if multifd { throw .invalidParameter("Postcopy is not yet compatible with multifd") }
            if mappedRAM { throw .invalidParameter("Mapped-ram migration is incompatible with postcopy") }
        }
        if backgroundSnapshot {
            // QEMU's check_caps_background_snapshot, with its text, for what Ferry has.
            // (`return-path` is always on in Ferry: a snapshot to a socket waits for the
            // destination's answer; a file has none.)
            if postcopyRAM { throw .invalidParameter("Background-snapshot is not compatible with postcopy-ram") }
            if postcopyBlocktime { throw .invalidParameter("Background-snapshot is not compatible with postcopy-blocktime") }
            if autoConverge { throw .invalidParameter("Background-snapshot is not compatible with auto-converge") }
            if zeroCopySend { throw .invalidParameter("Background-snapshot is not compatible with zero-copy-send") }
            // Ferry's own: into a mapped-ram file, multifd's threads write the pages.
            if multifd && !mappedRAM { throw .invalidParameter("Background-snapshot is not compatible with multifd") }
            // Incremental saves continue the dirty log, which a snapshot does not keep.
            if incremental { throw .invalidParameter("Background-snapshot is not compatible with x-ferry-incremental") }
        }
    }
}
