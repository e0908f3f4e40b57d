import MigrationProtocol
import Synchronization

/// The destination's end of the return path: frames `ReturnMessage`s onto the
/// incoming channel.  Safe to use from several threads (the load thread now,
/// a postcopy fault thread later): one lock holds the encoder and the write,
/// so frames go out whole and numbered in the order they are written.  The
/// stream header goes out with the first message.
///
/// After `shut`, or after a write failed (the stream may hold part of a frame),
/// nothing more is sent.
public final class ReturnPathWriter: Sendable {
    struct State {
        var encoder = ReturnPathEncoder()
        /// Why nothing more may be sent, once that is so.
        var closed: String?
    }
    let channel: any ByteChannel
    let state = Mutex(State())

    public init(channel: any ByteChannel) { self.channel = channel }

    /// Sends `message` whole, or throws.
    /// - Throws: `.channel` if the write fails, `.invalidState` after `shut` or a failed write.
    public func send(_ message: ReturnMessage) throws(MigrationError) {
        try state.withLock { s throws(MigrationError) in
            if let why = s.closed { throw .invalidState("the return path is closed (\(why)): cannot send \(message.type)") }
            let bytes = s.encoder.encode(message)
            do throws(ChannelError) { try channel.write(bytes) } catch {
                s.closed = "a write failed"
                throw .channel(error)
            }
            if message == .shut { s.closed = "shut" }
        }
    }

    /// Nothing more is sent from now on (a send under way has finished when
    /// this returns), so the channel may be closed without a late write landing
    /// on a descriptor number reused by then.
    public func retire(_ why: String) {
        state.withLock { if $0.closed == nil { $0.closed = why } }
    }
}
