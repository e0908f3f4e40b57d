import Migration
import Synchronization
import Transport

/// One machine's migration settings and its current migration, either way.
final class MigrationSlot: Sendable {
    struct State {
        var parameters = MigrationParameters()
        var capabilities = MigrationCapabilities()
        var outgoing: PrecopySource?
        var incoming: Incoming?
        /// An incoming load has started: guest RAM may no longer be all zero.
        var incomingRAMTouched = false
    }

    /// The destination side, from `--incoming` or `migrate-incoming` to the end.
    final class Incoming: Sendable {
        let status = Mutex(MigrationStatus.none)
        let listener: IncomingListener
        let error = Mutex<String?>(nil)
        init(listener: IncomingListener) { self.listener = listener }
        /// Where it listens (for `tcp:HOST:0`, with the port chosen).
        var address: MigrationURI { listener.address }
    }

    let state = Mutex(State())
}
