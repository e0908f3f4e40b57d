import MigrationProtocol
import Synchronization

/// The destination's current connection to its source: the main channel and
/// the return path on it.  A postcopy recovery replaces both; every thread
/// that answers the source (the loading thread, the fault thread, the preempt
/// receiver) reaches it through here, so none holds a channel that was closed.
///
/// With a postcopy preempt channel whose plan says the source reads them there
/// (`ChannelPlan.preemptRequests`), page requests go back on that channel,
/// apart from the main connection, which the source keeps busy with the
/// background (`PrecopySource.startPreemptRequests`).
final class DestinationLink: Sendable {
    struct Connection: Sendable {
        let channel: any ByteChannel
        let returnPath: ReturnPathWriter
        /// The preempt channel's way back, once it is connected: page requests go there.
        var requests: ReturnPathWriter?
    }
    private let current: Mutex<Connection>

    init(channel: any ByteChannel) {
        current = Mutex(Connection(channel: channel, returnPath: ReturnPathWriter(channel: channel)))
    }

    var channel: any ByteChannel { current.withLock { $0.channel } }
    var returnPath: ReturnPathWriter { current.withLock { $0.returnPath } }

    /// Sends `message` on the current return path.
    func send(_ message: ReturnMessage) throws(MigrationError) { try returnPath.send(message) }

    /// Asks the source for a page, as well as the connection allows: a request
    /// that cannot be sent shuts the channel, so the loading thread sees the
    /// break (and, in postcopy, pauses; the request is asked again after a recovery).
    func ask(block: Int, offset: Int, length: Int) {
        let connection = current.withLock { $0 }
        do throws(MigrationError) {
            try (connection.requests ?? connection.returnPath)
                .send(.pageRequest(block: UInt16(block), offset: UInt64(offset), length: UInt64(length)))
        } catch {
            connection.channel.shutdown()
        }
    }

    /// Page requests go on `writer` (the preempt channel's way back) from now
    /// on, until the connection is replaced.  Its owner retires it before closing its channel.
    func sendRequests(on writer: ReturnPathWriter) { current.withLock { $0.requests = writer } }

    /// Shuts the current channel: its reader and writers fail at once.
    func shutdown() { channel.shutdown() }

    /// Postcopy recovery: `channel` is the connection from now on.  The old one
    /// stops taking messages, then is closed.
    func replace(with channel: any ByteChannel) {
        let old = current.withLock { c -> Connection in
            defer { c = Connection(channel: channel, returnPath: ReturnPathWriter(channel: channel)) }
            return c
        }
        Self.retire(old)
    }

    /// The connection broke: it takes no more messages and is closed (its
    /// number stays in the link until a new one replaces it; sends then fail).
    func retireCurrent(_ why: String) { Self.retire(current.withLock { $0 }, why: why) }

    private static func retire(_ connection: Connection, why: String = "replaced by a new connection") {
        connection.channel.shutdown()
        connection.returnPath.retire(why)
        connection.channel.close()
    }
}
