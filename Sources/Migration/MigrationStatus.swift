/// A migration's status, with QEMU's `MigrationStatus` names (`query-migrate`
/// and the `MIGRATION` event).
public enum MigrationStatus: String, Equatable, Sendable {
    case none
    case setup
    case cancelling
    case cancelled
    case active
    /// Switchover: vCPUs stopped, the last pages and all device state going out.
    case device
    /// Postcopy: the destination runs the guest and the rest of RAM follows, asked for or not.
    case postcopyActive = "postcopy-active"
    case completed
    case failed

    /// Whether a migration in this status is over (another may start).
    public var isFinished: Bool { [.none, .cancelled, .completed, .failed].contains(self) }
}
