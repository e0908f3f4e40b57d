/// A migration's status, with QEMU's `MigrationStatus` names (`query-migrate`
/// and the `MIGRATION` event).
///
/// Postcopy (QEMU's transitions):
///
///     source:      postcopy-active ──(a channel breaks, or migrate-pause)──▶ postcopy-paused
///                  postcopy-paused ──(migrate resume:true)──▶ postcopy-recover-setup ──(connected)──▶ postcopy-recover
///                  postcopy-recover ──(the received bitmaps arrived)──▶ postcopy-active
///     destination: postcopy-active ──(a channel breaks, or migrate-pause)──▶ postcopy-paused
///                  postcopy-paused ──(migrate-recover, then the source connects)──▶ postcopy-recover
///                  postcopy-recover ──(received bitmaps sent)──▶ postcopy-active
///     either side: postcopy-recover-setup / postcopy-recover ──(the new connection fails)──▶ postcopy-paused
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
    /// Postcopy with its connection lost: the destination's guest runs on the
    /// pages it has (a vCPU that touches a missing one waits); both sides wait
    /// for a recovery.
    case postcopyPaused = "postcopy-paused"
    /// A recovery was asked for: the new connection is being made.
    case postcopyRecoverSetup = "postcopy-recover-setup"
    /// Connected again: the destination's received pages are being told to the source.
    case postcopyRecover = "postcopy-recover"
    case completed
    case failed

    /// Whether a migration in this status is over (another may start).
    public var isFinished: Bool { [.none, .cancelled, .completed, .failed].contains(self) }

    /// Whether the switch to postcopy was made and the migration is not over
    /// (QEMU's `migration_in_postcopy`): it can no longer be cancelled.
    public var isPostcopy: Bool { [.postcopyActive, .postcopyPaused, .postcopyRecoverSetup, .postcopyRecover].contains(self) }

    /// Whether postcopy has a connection that `migrate-pause` may break
    /// (QEMU's `migration_postcopy_is_alive`).
    public var isPostcopyConnected: Bool { self == .postcopyActive || self == .postcopyRecover }
}
