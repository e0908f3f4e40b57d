/// The destination's side of channel setup: where the source's connections
/// arrive.  The main channel comes first; multifd channels are accepted after
/// it on the same acceptor.
public protocol ChannelAcceptor: Sendable {
    /// Waits up to `timeout` (`nil`: forever) for the next connection.
    ///
    /// - Throws: ``ChannelError/timedOut(_:)`` when the time runs out (its text
    ///   names the address; add which channel was awaited), or the system error.
    func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel
    /// Stops accepting: later connects fail, and a later `accept` throws.  Idempotent.
    func close()
}
