import CLinuxUAPI
import Glibc
import Synchronization

/// One connected Unix stream socket that carries descriptors both ways
/// (`SCM_RIGHTS`).  Owns its descriptor: one thread reads, any thread writes,
/// shuts it down or closes it.
public final class UnixSocketConnection: Sendable {
    let descriptor: Int32
    let closed = Mutex(false)

    init(adopting descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit { close() }

    /// Connects to the listening socket at `path` (a client: tests, tools).
    public static func connect(to path: String) throws(SocketError) -> UnixSocketConnection {
        // SAFETY: `path` is bridged to a NUL-terminated C string that lives for the call.
        let result = unsafe CLinuxUAPI_unix_open(path, 0, -1)
        guard result >= 0 else { throw SocketError("connect to \(path)", errno: -result) }
        return UnixSocketConnection(adopting: result)
    }

    /// What one read brought: bytes, and the descriptors that came with them.
    public struct Message: Sendable {
        /// Empty at the end of the stream.
        public let bytes: [UInt8]
        /// Already close-on-exec and blocking; each closes itself unless taken.
        public let descriptors: [ReceivedDescriptor]
    }

    /// Waits for data and reads up to `maximum` bytes with the descriptors
    /// passed along with them (at most 16 a message, QEMU's limit; more are closed).
    /// The kernel never joins a message that carries descriptors with bytes
    /// sent after it, so the descriptors arrive before the command that names them.
    ///
    /// - Throws: ``SocketError`` from `recvmsg`; at the end of the stream
    ///   (or after `shutdown`) the message is empty instead.
    public func receive(maximum: Int = 4096) throws(SocketError) -> Message {
        precondition(maximum > 0)
        var bytes = [UInt8](repeating: 0, count: maximum)
        var numbers = [Int32](repeating: -1, count: Int(CLINUXUAPI_MAX_PASSED_FDS))
        var count: Int32 = 0
        let result = unsafe bytes.withUnsafeMutableBytes { raw in
            unsafe numbers.withUnsafeMutableBufferPointer { fds in
                // SAFETY: both buffers are pinned for the call, and the shim writes at most their counts.
                unsafe CLinuxUAPI_recv_with_fds(descriptor, raw.baseAddress!, raw.count, fds.baseAddress!, Int32(fds.count), &count)
            }
        }
        let descriptors = numbers.prefix(Int(count)).map { ReceivedDescriptor(adopting: $0) }
        guard result >= 0 else { throw SocketError("receive on the Unix socket", errno: Int32(-result)) }
        return Message(bytes: Array(bytes.prefix(result)), descriptors: descriptors)
    }

    /// Sends every byte of `bytes` (at least one if `descriptors` is not
    /// empty), the descriptors attached to the first write, as qemu.qmp's
    /// `send_fd_scm` does.  The caller keeps its own copies of the descriptors.
    ///
    /// - Throws: ``SocketError`` from `sendmsg` (`EPIPE` once the peer is gone;
    ///   `EINVAL` for descriptors without bytes or more than 16).
    public func send(_ bytes: [UInt8], passing descriptors: [Int32] = []) throws(SocketError) {
        guard !bytes.isEmpty || descriptors.isEmpty else { throw SocketError("send descriptors without data", errno: EINVAL) }
        var sent = 0
        var attached = descriptors
        while sent < bytes.count {
            let result = unsafe bytes.withUnsafeBytes { raw in
                unsafe attached.withUnsafeBufferPointer { fds in
                    // SAFETY: [sent, count) lies inside the array; `fds` holds `fds.count` descriptors; both pinned for the call.
                    unsafe CLinuxUAPI_send_with_fds(descriptor, raw.baseAddress! + sent, raw.count - sent,
                                                    fds.baseAddress, Int32(fds.count))
                }
            }
            guard result > 0 else { throw SocketError("send on the Unix socket", errno: result == 0 ? EPIPE : Int32(-result)) }
            sent += result
            attached = []
        }
    }

    /// A second descriptor for the same socket (close-on-exec), for a writer
    /// that wants to own one (SwiftNIO's output channel).  The caller owns it.
    public func duplicateDescriptor() throws(SocketError) -> Int32 {
        let result = closed.withLock { done in done ? -EBADF : CLinuxUAPI_dup_cloexec(descriptor) }
        guard result >= 0 else { throw SocketError("duplicate the socket's descriptor", errno: -result) }
        return result
    }

    /// Shuts the socket down both ways: a blocked `receive` returns the end of
    /// the stream, and so does the peer.  Does nothing once closed.
    public func shutdown() {
        closed.withLock { done in if !done { _ = CLinuxUAPI_shutdown(descriptor) } }
    }

    /// Closes the descriptor.  Idempotent.
    public func close() {
        closed.withLock { done in
            if !done { _ = Glibc.close(descriptor) }
            done = true
        }
    }
}
