import HostIO
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

    /// Counts one more reader (of `socket`, if any) and runs `start(done)`;
    /// the reader calls `done` when it ends.  Once shutting down, nothing is
    /// started and `socket` is closed.
    func track(_ socket: UnixSocketConnection?, _ start: (@escaping @Sendable () -> Void) -> Void) {
        let key = socket.map { ObjectIdentifier($0) }
        let admitted = state.withLock { state -> Bool in
            guard !state.closing else { return false }
            state.running += 1
            if let key, let socket { state.sockets[key] = socket }
            return true
        }
        guard admitted else {
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
