/// A snapshot of one migration for `query-migrate`: QEMU's fields, in Swift units.
public struct MigrationInfo: Equatable, Sendable {
    public var status: MigrationStatus = .none
    /// Milliseconds from `migrate` to now (or to the end).
    public var totalTime: UInt64 = 0
    /// Milliseconds spent in setup (tracking on, configuration sent).
    public var setupTime: UInt64 = 0
    /// Milliseconds the guest was stopped (completed migrations).
    public var downtime: UInt64?
    /// Milliseconds the switchover would take now: pending bytes over bandwidth.
    public var expectedDowntime: UInt64?
    public var ram = RAMStatistics()
    /// Every byte of the stream so far.
    public var transferredBytes: UInt64 = 0
    /// Bytes sent while the guest was stopped.
    public var downtimeBytes: UInt64 = 0
    /// Measured bandwidth in bytes per second (over the last window).
    public var bandwidth: Double = 0
    public var pagesPerSecond: UInt64 = 0
    /// Auto-converge's current throttle, when it is throttling.
    public var cpuThrottlePercentage: Int?
    /// Times the switchover was called off because the exact pending size broke the limit.
    public var switchoverRetries = 0
    public var errorDescription: String?
    /// The switchover passed the point of no return and the destination's answer
    /// was lost: it may run the guest, which stays paused here.
    public var destinationMayRun = false
    /// What each channel sent: main first, then the multifd channels.
    public var channels: [ChannelStatistics] = []
    /// Bytes sent on the multifd channels (QEMU's `ram.multifd-bytes`).
    public var multifdBytes: UInt64 = 0
    /// A mapped-ram save, once complete: what it wrote.
    public var mappedRAM: MappedRAMOutcome?
    /// A background snapshot's write faults, pages and limiter (Ferry's `x-ferry-background-snapshot`).
    public var snapshot: SnapshotStatistics?
    /// Page requests the destination sent (QEMU's `ram.postcopy-requests`).
    public var postcopyRequests: UInt64 = 0
    /// Bytes sent after the switch to postcopy (QEMU's `ram.postcopy-bytes`).
    public var postcopyBytes: UInt64 = 0
    /// Postcopy with preempt (Ferry's own): requests inside the huge page the
    /// background was sending (it finished them), pages sent on the preempt channel,
    /// and of those the ones the background had sent already (still on their way).
    public var postcopyDroppedRequests: UInt64 = 0
    public var postcopyUrgentPages: UInt64 = 0
    public var postcopyResentPages: UInt64 = 0
    /// Times postcopy paused (its connection broke, or `migrate-pause`) and waited for a recovery.
    public var postcopyPauses: UInt64 = 0
    /// The background's pace after the switch (`PostcopyPacing`), bytes per second; 0: not paced.
    public var postcopyPacing: UInt64 = 0
    /// The lowest pace the background had while requested pages took their share
    /// (`PostcopyBackgroundPace`), bytes per second; 0: never lowered.
    public var postcopyPacingLowest: UInt64 = 0
    /// The background's pace in force, bytes per second; 0: not paced.  It moves
    /// with the requested pages' share, the estimate's correction, and the yields;
    /// after the end (or at a pause), the last one applied.
    public var postcopyPacingNow: UInt64 = 0
    /// Times the background stepped aside for a requested huge page in flight (`PostcopyHugePageYield`).
    public var postcopyYields: UInt64 = 0

    public init() {}
}

/// What the source engine needs from the VM: stopping it for switchover,
/// resuming it on failure, throttling its vCPUs.
public protocol MigrationVMControl: Sendable {
    /// Stops the vCPUs (run state `finish-migrate`); returns whether the guest was running.
    func stopForSwitchover() -> Bool
    /// The migration completed: the source stays stopped (`postmigrate`).
    func migrationCompleted()
    /// The migration failed or was cancelled after `stopForSwitchover`: the guest
    /// runs again if it was running before.
    func resumeAfterFailedSwitchover(wasRunning: Bool)
    /// The switchover passed the point of no return but the destination's answer
    /// was lost: the guest may run there, so it stays stopped here (run state `paused`).
    func holdAfterUncertainSwitchover()
    /// Makes the vCPUs sleep `percent` of the time (0 ends throttling).
    func setThrottle(percent: Int)
}
