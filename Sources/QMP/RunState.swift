/// The VM's run state, with QEMU's `query-status` names.
public enum RunState: String, Equatable, Sendable {
    case running
    case paused
    case shutdown
    /// The guest died (triple fault, or its panic port); QEMU's "guest-panicked".
    case guestPanicked = "guest-panicked"
    case internalError = "internal-error"

    /// `query-status` reply: `status`, `running` and (deprecated in QEMU, still sent) `singlestep`.
    public var queryStatus: JSONValue {
        ["status": .string(rawValue), "running": .bool(self == .running), "singlestep": false]
    }
}
