/// How a save into a mapped-ram file runs (capability `mapped-ram`).
public struct MappedRAMSettings: Sendable {
    /// Threads writing pages (`writers(multifdChannels:direct:)`).
    public var writers: Int
    /// Ferry's `x-ferry-incremental`: leave dirty tracking on after a completed
    /// save, so the next save into the same file writes only what changed since.
    public var keepTracking: Bool
    /// The save this machine last completed with tracking left on: a save into
    /// that same file, still at that generation, continues it.
    public var baseline: MappedRAMBaseline?

    public init(writers: Int, keepTracking: Bool = false, baseline: MappedRAMBaseline? = nil) {
        (self.writers, self.keepTracking, self.baseline) = (writers, keepTracking, baseline)
    }

    /// Direct writes a save keeps in flight at least: each writer thread has one
    /// `pwritev` of up to 4 MiB at a time, and this disk wrote 11 % faster with 8
    /// than with 4 (A/B, stopped saves), no faster with 16.
    public static let directWritesInFlight = 8

    /// The writer threads of a save: one without multifd (nil), `multifd-channels`
    /// with it, and at least `directWritesInFlight` with `direct-io`.  Buffered
    /// writes only copy into the page cache, where more threads gain nothing.
    public static func writers(multifdChannels: Int?, direct: Bool) -> Int {
        guard let channels = multifdChannels else { return 1 }
        return direct ? max(channels, directWritesInFlight) : max(1, channels)
    }
}

/// A completed mapped-ram save: which file, and the generation it wrote.
public struct MappedRAMBaseline: Equatable, Sendable {
    public let file: FileIdentity
    public let generation: UInt64
    public init(file: FileIdentity, generation: UInt64) { (self.file, self.generation) = (file, generation) }
}

/// What a completed mapped-ram save did.
public struct MappedRAMOutcome: Equatable, Sendable {
    /// The file and generation written: the next incremental save's baseline.
    public let baseline: MappedRAMBaseline
    /// Whether it continued an earlier save (only pages dirtied since were written).
    public let incremental: Bool
    /// Pages the file holds now.
    public let presentPages: Int
}
