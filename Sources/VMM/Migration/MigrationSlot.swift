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
        /// A stream's listener (socket, stream file, descriptor), or nil for a mapped-ram file.
        let listener: IncomingListener?
        /// A mapped-ram restore: the file, and how many threads read its pages.
        let mappedRAM: (file: MigrationFile, readers: Int)?
        /// Where it listens (for `tcp:HOST:0`, with the port chosen) or reads.
        let address: MigrationURI
        let error = Mutex<String?>(nil)
        /// The load, once it started (for its postcopy figures, and to let go of a postcopy that failed).
        let destination = Mutex<MigrationDestination?>(nil)

        init(listener: IncomingListener) {
            self.listener = listener
            mappedRAM = nil
            address = listener.address
        }

        init(file: MigrationFile, uri: MigrationURI, readers: Int) {
            listener = nil
            mappedRAM = (file, readers)
            address = uri
        }
    }

    let state = Mutex(State())
}
