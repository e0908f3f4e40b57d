import Dispatch
import Foundation
import HostIO
import HostThreads
import NIOCore
import NIOPosix
import QMP
import Synchronization

/// The control socket: a Unix socket speaking the QEMU Machine Protocol.
///
/// Commands from every connection run one at a time on one serial queue (a
/// `stop` waits for the vCPUs to park, so never on the event loop); replies go
/// back in order.  Events go to every connection past negotiation.
///
/// Reading and writing take different roads.  A client may pass descriptors
/// with its bytes (`SCM_RIGHTS`, for `getfd` and `add-fd`), which SwiftNIO's
/// stream channels cannot receive: they read with `read(2)`, and the kernel
/// drops descriptors a plain read does not ask for.  So `HostIO` accepts the
/// connections and a thread per connection reads them with `recvmsg`
/// (``QMPConnection``); each read's descriptors and bytes go to the event loop
/// together, in order.  Everything else stays on SwiftNIO: an output-only
/// channel on a duplicate of the socket writes replies and events without
/// blocking anyone, and the same pipeline as before frames the bytes into
/// JSON texts and runs the session.
public final class QMPServer: Sendable {
    /// Runs one command; the descriptor is the one the client passed for it
    /// (`QMPCommand.takesDescriptor`), closed afterwards unless the command took it.
    public typealias Executor = @Sendable (QMPCommand, ReceivedDescriptor?) -> Result<JSONValue, QMPError>
    /// Runs after a command's reply has been flushed to its client.
    public typealias AfterReply = @Sendable (QMPCommand) -> Void

    let group: MultiThreadedEventLoopGroup
    let listener: UnixSocketListener
    let connections: Connections
    let live: LiveConnections

    /// Unread bytes of replies and events one client may leave queued before
    /// its connection is closed (``OutputLimit``); replies and events are
    /// small, the largest (`query-qmp-schema`) under 200 KB.
    public static let defaultOutputLimit = 8 << 20
    /// Clients served at once (each has a reader thread); one more is told
    /// so and closed.  QEMU's monitor socket serves one client at a time.
    public static let defaultConnectionLimit = 32

    /// Binds `path` (replacing a stale socket file) and starts serving.
    public static func start(path: String, version: QMPVersion, execute: @escaping Executor,
                             afterReply: @escaping AfterReply = { _ in },
                             outputLimit: Int = defaultOutputLimit,
                             connectionLimit: Int = defaultConnectionLimit) async throws -> QMPServer {
        let listener = try UnixSocketListener(path: path)
        let server = QMPServer(group: MultiThreadedEventLoopGroup(numberOfThreads: 1), listener: listener,
                               connectionLimit: connectionLimit)
        let queue = DispatchQueue(label: "ferry.qmp.commands")
        let (group, connections) = (server.group, server.connections)
        let pipeline: QMPConnection.Pipeline = { channel, inbox in
            try channel.pipeline.syncOperations.addHandler(OutputLimit(limit: outputLimit))
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(JSONObjectDecoder()))
            try channel.pipeline.syncOperations.addHandler(
                QMPChannelHandler(version: version, execute: execute, afterReply: afterReply,
                                  queue: queue, connections: connections, inbox: inbox))
        }
        let live = server.live
        live.track(nil) { done in
            HostThread.start("ferry-qmp") {
                while let socket = acceptNext(listener) {
                    live.track(socket) { finished in QMPConnection.serve(socket, group: group, pipeline: pipeline, done: finished) }
                }
                done()
            }
        }
        return server
    }

    /// The next connection, or nil once the listener is closed.  A failure
    /// that may pass (out of descriptors) is retried after a pause.
    static func acceptNext(_ listener: UnixSocketListener) -> UnixSocketConnection? {
        while true {
            do { return try listener.accept() } catch {
                if listener.isClosed { return nil }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
    }

    init(group: MultiThreadedEventLoopGroup, listener: UnixSocketListener, connectionLimit: Int) {
        self.group = group
        self.listener = listener
        self.connections = Connections()
        self.live = LiveConnections(connectionLimit: connectionLimit)
    }

    /// Sends `event` to every client in command mode.
    public func broadcast(_ event: QMPEvent) {
        connections.broadcast(QMPSession.encode(event.json) + "\r\n")
    }

    /// Stops accepting, ends every connection (their unclaimed descriptors are
    /// closed), waits for their reader threads, then stops the event loop.
    public func shutdown() async {
        listener.close()
        live.shutdownAll()
        await live.waitUntilIdle()
        connections.closeAll()
        try? await group.shutdownGracefully()
    }
}

/// Channels that finished negotiation, for events.
final class Connections: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) { channels.withLock { $0[ObjectIdentifier(channel)] = channel } }
    func remove(_ channel: any Channel) { _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) } }

    func broadcast(_ text: String) {
        for channel in channels.withLock({ Array($0.values) }) {
            channel.writeAndFlush(ByteBuffer(string: text), promise: nil)
        }
    }

    func closeAll() {
        for channel in channels.withLock({ Array($0.values) }) { channel.close(promise: nil) }
    }
}
