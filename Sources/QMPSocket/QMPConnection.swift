import Foundation
import Glibc
import HostIO
import HostThreads
import NIOCore
import NIOPosix

/// One client of the QMP socket.  A thread reads the socket with `recvmsg`
/// (bytes, and descriptors passed with them); a SwiftNIO output channel on a
/// duplicate of the socket writes to it and holds the protocol pipeline, into
/// which the thread feeds what it read.
enum QMPConnection {
    /// Installs the protocol handlers on a new connection's channel, with the
    /// connection's descriptor inbox.
    typealias Pipeline = @Sendable (any Channel, DescriptorInbox) throws -> Void

    /// Serves `socket` until either side closes it; `done` runs once its
    /// reader thread has ended (at once if the channel cannot be made).
    static func serve(_ socket: UnixSocketConnection, group: any EventLoopGroup, pipeline: @escaping Pipeline,
                      done: @escaping @Sendable () -> Void) {
        let inbox = DescriptorInbox()
        guard let channel = outputChannel(for: socket, group: group, pipeline: { try pipeline($0, inbox) }) else {
            socket.close()
            done()
            return
        }
        // Whichever side ends first ends the other: the pipeline closing the
        // channel (bad input, server shutdown) wakes the reader's `recvmsg`.
        channel.closeFuture.whenComplete { _ in socket.shutdown() }
        HostThread.start("ferry-qmp-read") {
            read(socket, into: channel, inbox: inbox)
            done()
        }
    }

    /// The channel that writes to `socket` (through a descriptor of its own,
    /// which NIO owns and closes), its handlers installed; nil if NIO refused it.
    static func outputChannel(for socket: UnixSocketConnection, group: any EventLoopGroup,
                              pipeline: @escaping @Sendable (any Channel) throws -> Void) -> (any Channel)? {
        guard let output = try? socket.duplicateDescriptor() else { return nil }
        let made = NIOPipeBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ReaderThreadInput())
                    try pipeline(channel)
                }
            }
            .takingOwnershipOfDescriptor(output: output)
        do { return try made.wait() } catch {
            _ = Glibc.close(output)     // a failed bootstrap leaves the descriptor with us
            return nil
        }
    }

    /// Reads until the end of the stream (or an error), handing each read to
    /// the event loop as one task: its descriptors to the inbox, for the texts
    /// that end with the read's last byte or later, then its bytes to the
    /// pipeline, then older messages out of the inbox.  Then closes the
    /// channel and the socket.
    ///
    /// Why "the last byte": one read may join bytes sent before a message
    /// that carried descriptors to that message (the kernel stops a read after
    /// such a message, never before it), so the descriptors belong to the
    /// read's tail.  A text completed earlier in the read was sent before them
    /// (qemu.qmp's `getfd` sent, then the next descriptor on a space); the
    /// text the last byte completes was sent with them (libvirt sends the
    /// descriptor with the command's own bytes).
    static func read(_ socket: UnixSocketConnection, into channel: any Channel, inbox: DescriptorInbox) {
        var offset = 0
        while let message = try? socket.receive(), !message.bytes.isEmpty {
            offset += message.bytes.count
            let (descriptors, bytes, end) = (message.descriptors, ByteBuffer(bytes: message.bytes), offset)
            channel.eventLoop.execute {
                inbox.deliver(descriptors, forTextsEndingFrom: end)
                channel.pipeline.fireChannelRead(bytes)     // decodes every text the read completes, at once
                inbox.keepLatest()
            }
        }
        channel.close(promise: nil)
        socket.close()
    }
}

/// The first handler of a connection's pipeline.  Its input is the reader
/// thread, not NIO: NIO sees an output-only channel and reports its input
/// closed as soon as the channel is set up, which would make the JSON decoder
/// ignore everything after.  That report is dropped here; the input ends when
/// the reader thread closes the whole channel.
final class ReaderThreadInput: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event as? ChannelEvent == .some(.inputClosed) { return }
        context.fireUserInboundEventTriggered(event)
    }
}
