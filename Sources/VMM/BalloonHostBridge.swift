import Devices
import GuestMemory
import Synchronization

/// What the virtio-balloon asks of its machine: give inflated pages back to the
/// host, and announce a new `actual` (BALLOON_CHANGE).
///
/// Inflated pages are discarded only on 4 KiB backends (a hugetlb page holds
/// other pages the guest still uses), and not while an incoming migration
/// loads: a discarded page there would be refilled by the stream, or, in
/// postcopy, fault and wait for a page the source may no longer send; nor
/// during a background snapshot, which saves what the guest had; nor while a
/// lazy restore still places pages.  QEMU inhibits the balloon in the same
/// cases (incoming postcopy, background snapshot).
final class BalloonHostBridge: Sendable {
    struct Reference { weak var machine: Machine? }
    let reference = Mutex(Reference())

    func attach(_ machine: Machine) { reference.withLock { $0.machine = machine } }

    func discard(_ range: GuestRange) {
        guard let machine = reference.withLock({ $0.machine }), machine.balloonMayDiscard,
              let (block, offset) = try? machine.memory.locate(range.start, length: range.byteCount),
              block.pageSize == .base else { return }
        try? block.mapping.discard(offset: offset, count: Int(range.byteCount))
    }

    func actualChanged(_ bytes: UInt64) {
        reference.withLock { $0.machine }?.emit("BALLOON_CHANGE", data: ["actual": .int(Int64(bytes))])
    }
}

extension Machine {
    /// False while an incoming migration has not completed (or, a lazy restore,
    /// still places pages: a placed page discarded would fault again, and the
    /// restore, which counts it placed, would only wake it, for ever), an
    /// outgoing one is in postcopy, or a background snapshot runs.
    ///
    /// Called with the balloon's device lock held, so the migration lock comes
    /// second: nothing may take the device's lock while it holds the migration
    /// lock (`VirtioBalloon.freePageHint` is stored for that).
    var balloonMayDiscard: Bool {
        migration.state.withLock { s in
            if let incoming = s.incoming, incoming.status.withLock({ $0 }) != .completed { return false }
            if let incoming = s.incoming, incoming.destination.withLock({ $0 })?.isLazyRestoreLoading == true { return false }
            if let outgoing = s.outgoing, outgoing.status.isPostcopy { return false }
            if let outgoing = s.outgoing, !outgoing.status.isFinished, outgoing.capabilities.backgroundSnapshot { return false }
            return true
        }
    }
}
