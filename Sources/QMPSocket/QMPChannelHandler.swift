import Dispatch
import HostIO
import NIOCore
import QMP
import Synchronization

/// One QMP connection: greeting on connect, then each JSON text through a
/// `QMPSession`; decoded commands go to the executor off the event loop.
/// A command that takes a passed descriptor (`getfd`, `add-fd`) takes it from
/// `inbox` when it is decoded, on the event loop, so it gets the descriptor
/// sent for it however long earlier commands run.
final class QMPChannelHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: `session` is touched only on this channel's event loop.
    typealias InboundIn = JSONText
    typealias OutboundOut = ByteBuffer

    private var session = QMPSession()
    private let version: QMPVersion
    private let execute: QMPServer.Executor
    private let afterReply: QMPServer.AfterReply
    private let queue: DispatchQueue
    private let connections: Connections
    private let inbox: DescriptorInbox

    init(version: QMPVersion, execute: @escaping QMPServer.Executor, afterReply: @escaping QMPServer.AfterReply,
         queue: DispatchQueue, connections: Connections, inbox: DescriptorInbox = DescriptorInbox()) {
        self.version = version
        self.execute = execute
        self.afterReply = afterReply
        self.queue = queue
        self.connections = connections
        self.inbox = inbox
    }

    func channelActive(context: ChannelHandlerContext) {
        send(QMPSession.greeting(version: version), context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connections.remove(context.channel)
        // Passed descriptors no command took die with the connection.
        inbox.close()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = unwrapInboundIn(data)
        let wasNegotiating = session.phase == .negotiating
        switch session.step(text.bytes) {
        case .reply(let reply):
            send(reply, context: context)
            if wasNegotiating && session.phase == .commandMode { connections.add(context.channel) }
        case .execute(let command, let id):
            let channel = context.channel
            let (execute, afterReply, queue) = (self.execute, self.afterReply, self.queue)
            // A descriptor the command does not take (it failed) is closed once it has run.
            let descriptor = command.takesDescriptor ? inbox.takeFirst(forTextEndingAt: text.end) : nil
            queue.async {
                let reply = switch execute(command, descriptor) {
                case .success(let value): QMPSession.success(value, id: id)
                case .failure(let error): QMPSession.error(error, id: id)
                }
                descriptor?.close()     // a no-op if the command took it
                // Not waited for here: a client that stops reading its replies would hold
                // every client's commands behind its flush.  What follows a reply (quit)
                // runs on this queue once it is flushed, or after a second at most.
                let flushed = channel.writeAndFlush(ByteBuffer(string: reply + "\r\n"))
                let once = Once()
                let follow: @Sendable () -> Void = { if once.claim() { queue.async { afterReply(command) } } }
                flushed.whenComplete { _ in follow() }
                channel.eventLoop.scheduleTask(in: .seconds(1)) { follow() }
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Oversized or unbalanced input: say so and drop the connection.
        send(QMPSession.error(.generic("JSON parse error, \(error)"), id: nil), context: context)
        context.close(promise: nil)
    }

    private func send(_ text: String, context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text + "\r\n")), promise: nil)
    }
}

/// Claimed by the first caller only.
final class Once: Sendable {
    private let claimed = Atomic<Bool>(false)
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
}
