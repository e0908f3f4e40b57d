import Migration
import Synchronization

/// The bytes `[start, end)` of an `AnalysisInput` as a read-only `ByteChannel`,
/// so the engine's own `FrameReader` decodes a stream file, or a mapped-ram
/// file's device state, exactly as a restore does, and never reads past the region.
final class FileRegionChannel: ByteChannel {
    let input: AnalysisInput
    let end: UInt64
    private let position: Mutex<UInt64>

    init(_ input: AnalysisInput, start: UInt64, end: UInt64) {
        (self.input, self.end) = (input, end)
        position = Mutex(start)
    }

    /// Where the next read starts.
    var offset: UInt64 { position.withLock { $0 } }

    let hasReturnPath = false

    func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        let at = position.withLock { $0 }
        let n = Int(min(UInt64(max(count, 0)), end > at ? end - at : 0))
        guard n > 0 else { return 0 }
        let bytes: [UInt8]
        do { bytes = try input.read(n, at: at) } catch {
            if error == .endOfStream { return 0 }      // the file shrank under us: the reader reports the cut
            throw error
        }
        buffer.replaceSubrange(offset..<offset + n, with: bytes)
        position.withLock { $0 = at + UInt64(n) }
        return n
    }

    func write(_ bytes: [UInt8]) throws(ChannelError) { throw .system("ferry analyze only reads", errno: 9) }
    func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { true }
    func shutdown() {}
    func close() {}
}
