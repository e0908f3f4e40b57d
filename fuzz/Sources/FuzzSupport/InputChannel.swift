import Migration
import Synchronization

/// A `ByteChannel` that reads a fixed byte array (the fuzz input) and keeps
/// whatever is written (nothing on a channel without a return path, or a stream
/// when the seed generator writes one).
public final class InputChannel: ByteChannel {
    private struct State {
        var input: [UInt8]
        var position = 0
        public var written: [UInt8] = []
    }
    private let state: Mutex<State>
    public let hasReturnPath = false

    public init(_ input: [UInt8] = []) { state = Mutex(State(input: input)) }

    /// Everything written so far.
    public var written: [UInt8] { state.withLock { $0.written } }

    public func write(_ bytes: [UInt8]) throws(ChannelError) { state.withLock { $0.written += bytes } }

    public func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        precondition(count >= 0 && offset >= 0 && offset + count <= buffer.count, "read without room in the buffer")
        return state.withLock { s in
            let n = min(count, s.input.count - s.position)
            buffer.replaceSubrange(offset..<offset + n, with: s.input[s.position..<s.position + n])
            s.position += n
            return n
        }
    }

    public func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { true }
    public func shutdown() {}
    public func close() {}
}

/// A `ChannelAcceptor` that hands out the given streams as `InputChannel`s, in
/// order, then says no connection arrived (the multifd channels of a fuzz input).
public final class InputAcceptor: ChannelAcceptor {
    private let pending: Mutex<[[UInt8]]>

    public init(_ streams: [[UInt8]]) { pending = Mutex(streams.reversed()) }

    public func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel {
        guard let next = pending.withLock({ $0.popLast() }) else { throw .timedOut("no further channel in the fuzz input") }
        return InputChannel(next)
    }

    public func close() { pending.withLock { $0.removeAll() } }
}
