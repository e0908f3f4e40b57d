import Migration
import Synchronization

/// A `ByteChannel` that reads a fixed byte array (the fuzz input) and keeps
/// whatever is written (nothing on a channel without a return path, or a stream
/// when the seed generator writes one).
final class InputChannel: ByteChannel {
    private struct State {
        var input: [UInt8]
        var position = 0
        var written: [UInt8] = []
    }
    private let state: Mutex<State>
    let hasReturnPath = false

    init(_ input: [UInt8] = []) { state = Mutex(State(input: input)) }

    /// Everything written so far.
    var written: [UInt8] { state.withLock { $0.written } }

    func write(_ bytes: [UInt8]) throws(ChannelError) { state.withLock { $0.written += bytes } }

    func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        precondition(count >= 0 && offset >= 0 && offset + count <= buffer.count, "read without room in the buffer")
        return state.withLock { s in
            let n = min(count, s.input.count - s.position)
            buffer.replaceSubrange(offset..<offset + n, with: s.input[s.position..<s.position + n])
            s.position += n
            return n
        }
    }

    func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { true }
    func shutdown() {}
    func close() {}
}
