import CLinuxUAPI
import Glibc
import Synchronization

/// A listening Unix stream socket whose connections can carry descriptors
/// (the QMP socket).  Owns its descriptor and, until `close`, its path.
public final class UnixSocketListener: Sendable {
    public let path: String
    let descriptor: Int32
    let closed = Mutex(false)

    /// Listens on `path`, replacing a stale socket file there (anything else at
    /// `path` is refused, never removed).
    ///
    /// - Throws: ``SocketError`` naming the path, with `EEXIST` for a path
    ///   that is not a socket, `ENAMETOOLONG` for one longer than 107 bytes.
    public init(path: String) throws(SocketError) {
        // SAFETY: `path` is bridged to a NUL-terminated C string that lives for the call.
        let result = unsafe CLinuxUAPI_unix_listen(path)
        guard result >= 0 else { throw SocketError("listen on \(path)", errno: -result) }
        self.path = path
        descriptor = result
    }

    deinit { close() }

    /// Waits for the next connection.
    ///
    /// - Throws: ``SocketError`` with `ECANCELED` once the listener is closed
    ///   (a blocked call returns then too), or what `accept` said (`EMFILE`
    ///   when this process is out of descriptors: worth retrying later).
    public func accept() throws(SocketError) -> UnixSocketConnection {
        // A closed listener's number may belong to another file by now.
        guard !isClosed else { throw SocketError("accept on \(path): the listener is closed", errno: ECANCELED) }
        let result = CLinuxUAPI_unix_accept(descriptor)
        if result < 0 && isClosed { throw SocketError("accept on \(path): the listener is closed", errno: ECANCELED) }
        guard result >= 0 else { throw SocketError("accept on \(path)", errno: -result) }
        return UnixSocketConnection(adopting: result)
    }

    public var isClosed: Bool { closed.withLock { $0 } }

    /// Stops listening, wakes a blocked `accept` and removes the path.  Idempotent.
    public func close() {
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        _ = CLinuxUAPI_shutdown(descriptor)
        _ = Glibc.close(descriptor)
        // SAFETY: `path` is bridged to a NUL-terminated C string that lives for the call.
        _ = unsafe unlink(path)
    }
}
