/// Free page hints as the engine sees them (QEMU's precopy notifier for
/// virtio-balloon's FREE_PAGE_HINT): told around every dirty-log sync, and at
/// the end.  Whatever reports free pages answers through
/// `RAMMigration.dropFreePages`, naming the sync its round followed.
///
/// Never used with postcopy or a background snapshot: a page left unsent
/// because it was free would, after the switch, be a page a faulting vCPU
/// waits for that never comes (QEMU skips hints there too).
public protocol FreePageHints: AnyObject, Sendable {
    /// A sync is about to start: hints stop applying.
    func willSync()
    /// Sync number `epoch` is merged, guest running: a new round may start.
    func didSync(epoch: UInt64, ram: RAMMigration)
    /// The guest stopped for the switchover, or the migration ended: the guest
    /// may reuse what it reported.
    func finish()
}
