/// What the embedded guest does (`--workload`): `idle`, or
/// `dirty-rate=RATE[,working-set=SIZE][,access=random][,free=SIZE][,churn=SIZE]`
/// with RATE in bytes per second (or `max`) and sizes with K, M or G suffixes.
/// `access=random` adds one read of a random page of the working set after
/// each page written.  `free=SIZE`: after its first pass the guest gives the
/// last SIZE of its working set back to its page allocator (free memory a
/// balloon driver can report).  `churn=SIZE`: the guest keeps allocating
/// 4 MiB blocks from its allocator, writing them, verifying and freeing them,
/// SIZE of them live at a time.
public struct WorkloadSpec: Equatable, Sendable, CustomStringConvertible {
    public enum DirtyRate: Equatable, Sendable {
        /// Touch the working set once, then only beat.
        case idle
        case max
        case bytesPerSecond(UInt64)
    }

    public var dirtyRate: DirtyRate
    /// Bytes of guest RAM the workload cycles through; `nil` for all of it.
    public var workingSet: UInt64?
    /// After each page written, read (and verify) a random page of the working set.
    public var randomAccess: Bool
    /// Bytes at the end of the working set freed after the first pass.
    public var free: UInt64?
    /// Bytes of 4 MiB blocks kept allocated, rewritten and freed in turn.
    public var churn: UInt64?

    public init(dirtyRate: DirtyRate, workingSet: UInt64? = nil, randomAccess: Bool = false, free: UInt64? = nil, churn: UInt64? = nil) {
        self.dirtyRate = dirtyRate
        self.workingSet = workingSet
        self.randomAccess = randomAccess
        self.free = free
        self.churn = churn
    }

    public static let idle = WorkloadSpec(dirtyRate: .idle)

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case unknownKey(String), badValue(key: String, value: String), missingRate
        public var description: String {
            switch self {
            case .unknownKey(let key): "unknown workload key '\(key)' (expected dirty-rate, working-set, access, free or churn)"
            case .badValue(let key, let value): "invalid value '\(value)' for workload key '\(key)'"
            case .missingRate: "a workload needs dirty-rate=RATE, or is 'idle'"
            }
        }
    }

    public init(parsing text: String) throws(ParseError) {
        if text == "idle" { self = .idle; return }
        var rate: DirtyRate?
        var workingSet: UInt64?
        var randomAccess = false
        var free: UInt64?, churn: UInt64?
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw .unknownKey(String(item)) }
            switch parts[0] {
            case "dirty-rate":
                if parts[1] == "max" { rate = .max }
                else if let bytes = ByteSize.parse(parts[1]) { rate = bytes == 0 ? .idle : .bytesPerSecond(bytes) }
                else { throw .badValue(key: parts[0], value: parts[1]) }
            case "working-set":
                guard let bytes = ByteSize.parse(parts[1]), bytes >= 4096 else { throw .badValue(key: parts[0], value: parts[1]) }
                workingSet = bytes
            case "access":
                guard ["random", "sweep"].contains(parts[1]) else { throw .badValue(key: parts[0], value: parts[1]) }
                randomAccess = parts[1] == "random"
            case "free", "churn":
                guard let bytes = ByteSize.parse(parts[1]), bytes > 0, bytes % (4 << 20) == 0 else {
                    throw .badValue(key: parts[0], value: parts[1])
                }
                if parts[0] == "free" { free = bytes } else { churn = bytes }
            default:
                throw .unknownKey(parts[0])
            }
        }
        guard let rate else { throw .missingRate }
        if let free, free >= (workingSet ?? .max) { throw .badValue(key: "free", value: ByteSize.format(free)) }
        self.init(dirtyRate: rate, workingSet: workingSet, randomAccess: randomAccess, free: free, churn: churn)
    }

    public var description: String {
        let rate = switch dirtyRate {
        case .idle: "0"
        case .max: "max"
        case .bytesPerSecond(let bytes): ByteSize.format(bytes)
        }
        if dirtyRate == .idle && workingSet == nil && !randomAccess && free == nil && churn == nil { return "idle" }
        return "dirty-rate=\(rate)" + (workingSet.map { ",working-set=\(ByteSize.format($0))" } ?? "")
            + (randomAccess ? ",access=random" : "") + (free.map { ",free=\(ByteSize.format($0))" } ?? "")
            + (churn.map { ",churn=\(ByteSize.format($0))" } ?? "")
    }
}

/// Sizes as users write them: `512M`, `1G`, `4096`, `64K` (binary multiples).
public enum ByteSize {
    public static func parse(_ text: String) -> UInt64? {
        guard let last = text.last else { return nil }
        let shift: UInt64 = switch last {
        case "k", "K": 10
        case "m", "M": 20
        case "g", "G": 30
        case "t", "T": 40
        default: 0
        }
        let digits = shift == 0 ? Substring(text) : text.dropLast()
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let value = UInt64(digits) else { return nil }
        let (result, overflow) = value.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : result
    }

    public static func format(_ bytes: UInt64) -> String {
        for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}
