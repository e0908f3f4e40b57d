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
    }

    /// The destination side, from `--incoming` or `migrate-incoming` to the end.
    final class Incoming: Sendable {
        let status = Mutex(MigrationStatus.none)
        let address: MigrationURI
        let listener: IncomingListener
        let error = Mutex<String?>(nil)
        init(address: MigrationURI, listener: IncomingListener) {
            self.address = address
            self.listener = listener
        }
    }

    let state = Mutex(State())
}
