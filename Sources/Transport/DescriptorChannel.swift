import CLinuxUAPI
import Glibc
import Migration
import Synchronization

/// A migration channel over one file descriptor: a connected socket, a file,
/// or a descriptor handed over with `fd:N`.  Closes it once.
public final class DescriptorChannel: ByteChannel {
    let descriptor: Int32
    public let hasReturnPath: Bool
    let closed = Mutex(false)
    /// Set by `limitInactivity`: a read that waits this long fails with `.inactive`.
    let inactivity = Mutex<Duration?>(nil)

    /// Adopts `descriptor`; `returnPath` is whether the other side can answer on it.
    public init(adopting descriptor: Int32, returnPath: Bool) {
        CLinuxUAPI_ignore_sigpipe()
        self.descriptor = descriptor
        self.hasReturnPath = returnPath
    }

    deinit { close() }

    public func write(_ bytes: [UInt8]) throws(ChannelError) {
        var written = 0
        while written < bytes.count {
            let result = unsafe bytes.withUnsafeBytes { raw in
                // SAFETY: the range [written, count) lies inside the array.
                unsafe CLinuxUAPI_write(descriptor, raw.baseAddress! + written, raw.count - written)
            }
            guard result > 0 else {
                throw .system("write to the migration channel", errno: result == 0 ? 32 : Int32(-result))
            }
            written += result
        }
    }

    public func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        precondition(offset >= 0 && count >= 0 && offset + count <= buffer.count)
        guard count > 0 else { return 0 }
        let result = unsafe buffer.withUnsafeMutableBytes { raw in
            // SAFETY: the precondition keeps [offset, offset + count) inside the buffer.
            unsafe CLinuxUAPI_read(descriptor, raw.baseAddress! + offset, count)     // retries EINTR itself
        }
        if result >= 0 { return result }
        if result == -Int(EAGAIN), let limit = inactivity.withLock({ $0 }) { throw .inactive(limit) }
        throw .system("read from the migration channel", errno: Int32(-result))
    }

    /// Makes a read that waits `limit` for its first byte fail with `.inactive`
    /// (the socket's receive timeout; `nil` waits forever).  Sockets only: a
    /// file's read never waits.
    public func limitInactivity(_ limit: Duration?) {
        let milliseconds = limit.map { Int32(clamping: $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? 0
        guard CLinuxUAPI_set_receive_timeout(descriptor, milliseconds) == 0 else { return }
        inactivity.withLock { $0 = limit }
    }

    public func waitReadable(timeout: Duration) throws(ChannelError) -> Bool {
        let milliseconds = Int32(clamping: timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let result = CLinuxUAPI_wait_readable(descriptor, milliseconds)
        guard result >= 0 else { throw .system("poll on the migration channel", errno: -result) }
        return result > 0
    }

    /// Shuts the socket down unless it is closed already (its number may belong to another file by now).
    public func shutdown() {
        closed.withLock { done in if !done { _ = CLinuxUAPI_shutdown(descriptor) } }
    }

    public func close() {
        closed.withLock { done in
            if !done { _ = Glibc.close(descriptor) }
            done = true
        }
    }
}
