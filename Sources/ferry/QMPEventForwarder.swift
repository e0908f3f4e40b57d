import QMP
import QMPSocket
import Synchronization

/// Hands machine events to the QMP server once it exists (the machine is built first).
final class QMPEventForwarder: Sendable {
    private let server = Mutex<QMPServer?>(nil)

    func attach(_ server: QMPServer) { self.server.withLock { $0 = server } }
    func forward(_ event: QMPEvent) { server.withLock { $0 }?.broadcast(event) }
}
