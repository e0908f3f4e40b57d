import NIOCore

/// The first outbound handler of a connection: counts the bytes of replies
/// and events written to the client and not yet taken by its socket, and
/// closes the connection once they pass `limit`.  A client that sends
/// commands (or waits for events) and never reads would otherwise grow
/// Ferry's memory without end; QEMU's monitor has the same exposure and a
/// queue of eight requests, Ferry bounds the output instead.
final class OutputLimit: ChannelOutboundHandler, @unchecked Sendable {
    // @unchecked: `unsent` is touched only on this channel's event loop
    // (`write` and the write promises' callbacks both run there).
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let limit: Int
    private var unsent = 0
    private var closing = false

    init(limit: Int) { self.limit = limit }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data).readableBytes
        guard !closing, unsent + bytes <= limit else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            if !closing {
                closing = true
                context.close(promise: nil)
            }
            return
        }
        unsent += bytes
        let written = promise ?? context.eventLoop.makePromise()
        written.futureResult.whenComplete { _ in self.unsent -= bytes }
        context.write(data, promise: written)
    }
}
