import Devices
import GuestMemory
import Synchronization

/// What the virtio-balloon asks of its machine: give inflated pages back to the
/// host, and announce a new `actual` (BALLOON_CHANGE).
///
/// Inflated pages are discarded only on 4 KiB backends (a hugetlb page holds
/// other pages the guest still uses), and not while an incoming migration
/// loads: a discarded page there would be refilled by the stream, or, in
/// postcopy, fault and wait for a page the source may no longer send.  QEMU
/// inhibits the balloon during postcopy for the same reason.
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
    /// False while an incoming migration has not completed, or an outgoing one is in postcopy.
    var balloonMayDiscard: Bool {
        migration.state.withLock { s in
            if let incoming = s.incoming, incoming.status.withLock({ $0 }) != .completed { return false }
            if let outgoing = s.outgoing, outgoing.status == .postcopyActive { return false }
            return true
        }
    }
}
