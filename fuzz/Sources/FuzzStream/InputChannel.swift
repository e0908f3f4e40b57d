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

    func readExactly(_ count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) {
        precondition(count >= 0 && offset >= 0 && offset + count <= buffer.count, "readExactly without room in the buffer")
        try state.withLock { (s: inout State) throws(ChannelError) in
            guard count <= s.input.count - s.position else {
                s.position = s.input.count
                throw .endOfStream
            }
            buffer.replaceSubrange(offset..<offset + count, with: s.input[s.position..<s.position + count])
            s.position += count
        }
    }

    func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { false }
    func shutdown() {}
    func close() {}
}
