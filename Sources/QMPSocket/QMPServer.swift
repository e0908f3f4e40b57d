import Foundation
import HostIO
import HostThreads
import NIOCore
import NIOPosix
import QMP
import Synchronization

/// The control socket: a Unix socket speaking the QEMU Machine Protocol.
///
/// Each connection's commands run on its reader thread, one at a time across
/// all connections (`QMPCommands`; a `stop` waits for the vCPUs to park, so
/// never on the event loop); replies go back in order.  Events go to every
/// connection past negotiation.
///
/// Reading and writing take different roads.  A client may pass descriptors
/// with its bytes (`SCM_RIGHTS`, for `getfd` and `add-fd`), which SwiftNIO's
/// stream channels cannot receive: they read with `read(2)`, and the kernel
/// drops descriptors a plain read does not ask for.  So `HostIO` accepts the
/// connections and a thread per connection reads them with `recvmsg`, frames
/// the bytes into JSON texts and answers them (``QMPConnection``,
/// ``QMPInput``).  Writing stays on SwiftNIO: an output-only channel on a
/// duplicate of the socket writes replies and events without blocking anyone.
public final class QMPServer: Sendable {
    /// Runs one command; the descriptor is the one the client passed for it
    /// (`QMPCommand.takesDescriptor`), closed afterwards unless the command took it.
    public typealias Executor = @Sendable (QMPCommand, ReceivedDescriptor?) -> Result<JSONValue, QMPError>
    /// What runs after a command's reply has been flushed to its client; nil
    /// for nothing (the reply is then written and not waited for at all).
    public typealias AfterReply = @Sendable (QMPCommand) -> (@Sendable () -> Void)?

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
                             afterReply: @escaping AfterReply = { _ in nil },
                             outputLimit: Int = defaultOutputLimit,
                             connectionLimit: Int = defaultConnectionLimit) async throws -> QMPServer {
        let listener = try UnixSocketListener(path: path)
        let server = QMPServer(group: MultiThreadedEventLoopGroup(numberOfThreads: 1), listener: listener,
                               connectionLimit: connectionLimit)
        let commands = QMPCommands(executor: execute, afterReply: afterReply)
        let (group, connections) = (server.group, server.connections)
        let pipeline: QMPConnection.Pipeline = { channel in
            try channel.pipeline.syncOperations.addHandler(OutputLimit(limit: outputLimit))
        }
        let input: QMPConnection.Input = { channel, inbox in
            QMPInput(version: version, channel: channel, commands: commands, connections: connections, inbox: inbox)
        }
        let live = server.live
        live.track(nil) { done in
            HostThread.start("ferry-qmp") {
                while let socket = acceptNext(listener) {
                    live.track(socket) { finished in QMPConnection.serve(socket, group: group, pipeline: pipeline, input: input, done: finished) }
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
