import HostIO
import QMP
import Synchronization

/// The server's threads still reading (the accept thread and one per
/// connection) and their sockets, so `shutdown` can end them all and wait for
/// them before it stops the event loop they hand work to.
final class LiveConnections: Sendable {
    struct State {
        var sockets: [ObjectIdentifier: UnixSocketConnection] = [:]
        var running = 0
        var closing = false
    }
    let state = Mutex(State())
    /// Connections served at once; one more is told so and closed.
    let connectionLimit: Int

    init(connectionLimit: Int) { self.connectionLimit = connectionLimit }

    /// Counts one more reader (of `socket`, if any) and runs `start(done)`;
    /// the reader calls `done` when it ends.  Once shutting down, nothing is
    /// started and `socket` is closed; past `connectionLimit` connections,
    /// `socket` gets an error and is closed.
    func track(_ socket: UnixSocketConnection?, _ start: (@escaping @Sendable () -> Void) -> Void) {
        enum Admission { case admitted, closing, full }
        let key = socket.map { ObjectIdentifier($0) }
        let admission = state.withLock { state -> Admission in
            guard !state.closing else { return .closing }
            if let key, let socket {
                guard state.sockets.count < connectionLimit else { return .full }
                state.sockets[key] = socket
            }
            state.running += 1
            return .admitted
        }
        switch admission {
        case .admitted: break
        case .closing:
            socket?.close()
            return
        case .full:
            // A new socket's buffer takes this short text at once.
            let text = QMPSession.error(.generic("too many QMP clients: \(connectionLimit) are connected"), id: nil)
            try? socket?.send(Array((text + "\r\n").utf8))
            socket?.close()
            return
        }
        start { [self] in
            state.withLock { state in
                state.running -= 1
                if let key { state.sockets[key] = nil }
            }
        }
    }

    /// Refuses new readers and shuts every tracked socket down, which ends its reader.
    func shutdownAll() {
        let sockets = state.withLock { state -> [UnixSocketConnection] in
            state.closing = true
            return Array(state.sockets.values)
        }
        for socket in sockets { socket.shutdown() }
    }

    /// Returns once every reader has ended (at most after two seconds: shutdown never hangs on a stuck thread).
    func waitUntilIdle() async {
        let deadline = ContinuousClock.now + .seconds(2)
        while state.withLock({ $0.running }) > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}
