/// The VM's run state, with QEMU's `query-status` names.
public enum RunState: String, Equatable, Sendable {
    case running
    case paused
    case shutdown
    /// The guest died (triple fault, or its panic port); QEMU's "guest-panicked".
    case guestPanicked = "guest-panicked"
    case internalError = "internal-error"
    /// Created with `-S`: the vCPUs wait for `cont`.
    case prelaunch
    /// Waiting for an incoming migration (`--incoming`).
    case inmigrate
    /// The source after a completed migration: paused for good, its guest lives elsewhere.
    case postmigrate
    /// The source during switchover: vCPUs stopped, the last state going out.
    case finishMigrate = "finish-migrate"

    /// `query-status` reply: `status`, `running` and (deprecated in QEMU, still sent) `singlestep`.
    public var queryStatus: JSONValue {
        ["status": .string(rawValue), "running": .bool(self == .running), "singlestep": false]
    }
}
