import MigrationProtocol

/// The destination's side of channel setup: where the source's connections
/// arrive.  The main channel comes first; multifd channels are accepted after
/// it on the same acceptor.
public protocol ChannelAcceptor: Sendable {
    /// Waits up to `timeout` (`nil`: forever) for the next connection.
    ///
    /// - Throws: ``ChannelError/timedOut(_:)`` when the time runs out (its text
    ///   names the address; add which channel was awaited), or the system error.
    func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel
    /// `accept`, for a channel that may rightly stay silent for long (the postcopy
    /// preempt channel carries nothing until a page is asked for): no inactivity
    /// limit on it (the main channel's covers a source gone silent).
    func acceptQuiet(timeout: Duration?) throws(ChannelError) -> any ByteChannel
    /// Stops accepting: later connects fail, and a later `accept` throws.  Idempotent.
    func close()
    /// Makes an `accept` blocked in another thread fail now, without closing
    /// (that thread closes it when done: a descriptor closed under it could be
    /// another file's by the time it accepts again).
    func interrupt()
}

extension ChannelAcceptor {
    /// Acceptors with no descriptor of their own: closing is interrupting.
    public func interrupt() { close() }
}

extension ChannelAcceptor {
    public func acceptQuiet(timeout: Duration?) throws(ChannelError) -> any ByteChannel { try accept(timeout: timeout) }
}

extension ChannelIdentity {
    /// Reads and checks the stream header that opens an accepted connection
    /// (`what` names the connection in the error when it closes first).
    static func read(from channel: any ByteChannel, what: String = "connection") throws(MigrationError) -> ChannelIdentity {
        var header = [UInt8](repeating: 0, count: StreamHeader.byteCount)
        do {
            try channel.readExactly(header.count, into: &header, at: 0)
            return try StreamHeader.decode(header)
        } catch let error as ProtocolError {
            throw .stream(error)
        } catch {
            throw .stream(.truncated("a \(what) closed before its stream header (\(error))"))
        }
    }

    /// `read`, within `limit`: a connection that opens and says nothing (a stray
    /// client on the port, a source gone mid-handshake) is shut, and the error says so.
    static func read(from channel: any ByteChannel, what: String, within limit: Duration) throws(MigrationError) -> ChannelIdentity {
        let watchdog = HandshakeWatchdog(channel: channel, limit: limit)
        defer { watchdog.disarm() }
        do { return try read(from: channel, what: what) } catch {
            if watchdog.hasFired { throw .channel(.timedOut("the \(what) sent no stream header within \(limit)")) }
            throw error
        }
    }
}
