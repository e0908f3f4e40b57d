import Dispatch
import NIOCore
import NIOPosix
import QMP
import Synchronization

/// The QMP control socket: a Unix socket speaking the QEMU Machine Protocol.
///
/// Commands from every connection run one at a time on one serial queue (a
/// `stop` waits for the vCPUs to park, so never on the event loop); replies go
/// back in order.  Events go to every connection past negotiation.
public final class QMPServer: Sendable {
    public typealias Executor = @Sendable (QMPCommand) -> Result<JSONValue, QMPError>
    /// Runs after a command's reply has been flushed to its client.
    public typealias AfterReply = @Sendable (QMPCommand) -> Void

    let group: MultiThreadedEventLoopGroup
    let channel: any Channel
    let connections: Connections

    /// Binds `path` (replacing a stale socket file) and starts serving.
    public static func start(path: String, version: QMPVersion, execute: @escaping Executor,
                             afterReply: @escaping AfterReply = { _ in }) async throws -> QMPServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connections = Connections()
        let queue = DispatchQueue(label: "ferry.qmp.commands")
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(JSONObjectDecoder()))
                    try channel.pipeline.syncOperations.addHandler(
                        QMPChannelHandler(version: version, execute: execute, afterReply: afterReply,
                                          queue: queue, connections: connections))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true)
            .get()
        return QMPServer(group: group, channel: channel, connections: connections)
    }

    init(group: MultiThreadedEventLoopGroup, channel: any Channel, connections: Connections) {
        self.group = group
        self.channel = channel
        self.connections = connections
    }

    /// Sends `event` to every client in command mode.
    public func broadcast(_ event: QMPEvent) {
        connections.broadcast(QMPSession.encode(event.json) + "\r\n")
    }

    public func shutdown() async {
        try? await channel.close()
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
