import Dispatch
import Synchronization

/// Shuts `channel` unless disarmed within `limit`: a recovered connection that
/// opens and then says nothing must not hold a paused postcopy for long.
final class HandshakeWatchdog: Sendable {
    private let armed = Atomic<Bool>(true)
    private let fired = Atomic<Bool>(false)

    init(channel: any ByteChannel, limit: Duration) {
        let (seconds, attoseconds) = limit.components
        let nanoseconds = Int(max(0, min(seconds, 1 << 30)) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000)
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanoseconds)) { [weak self] in
            if let self, self.armed.load(ordering: .acquiring) {
                self.fired.store(true, ordering: .releasing)
                channel.shutdown()
            }
        }
    }

    func disarm() { armed.store(false, ordering: .releasing) }

    /// Whether the limit ran out and the channel was shut (why a read on it failed).
    var hasFired: Bool { fired.load(ordering: .acquiring) }
}
