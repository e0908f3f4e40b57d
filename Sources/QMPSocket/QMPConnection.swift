import Glibc
import HostIO
import HostThreads
import NIOCore
import NIOPosix

/// One client of the QMP socket.  A thread reads the socket with `recvmsg`
/// (bytes, and descriptors passed with them) and answers what it reads
/// (`QMPInput`); a SwiftNIO output channel on a duplicate of the socket
/// writes the replies and events.
enum QMPConnection {
    /// Installs the output handlers on a new connection's channel.
    typealias Pipeline = @Sendable (any Channel) throws -> Void
    /// The input side of a new connection: its channel and descriptor inbox.
    typealias Input = @Sendable (any Channel, DescriptorInbox) -> QMPInput

    /// Serves `socket` until either side closes it; `done` runs once its
    /// reader thread has ended (at once if the channel cannot be made).
    static func serve(_ socket: UnixSocketConnection, group: any EventLoopGroup, pipeline: @escaping Pipeline,
                      input: @escaping Input, done: @escaping @Sendable () -> Void) {
        guard let channel = outputChannel(for: socket, group: group, pipeline: pipeline) else {
            socket.close()
            done()
            return
        }
        // The channel closing (too much unread output) wakes the reader's
        // `recvmsg`; the reader ending (end of stream, bad input, the server's
        // shutdown of the socket) closes the channel.
        channel.closeFuture.whenComplete { _ in socket.shutdown() }
        HostThread.start("ferry-qmp-read") {
            read(socket, into: input(channel, DescriptorInbox()))
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
                channel.eventLoop.makeCompletedFuture { try pipeline(channel) }
            }
            .takingOwnershipOfDescriptor(output: output)
        do { return try made.wait() } catch {
            _ = Glibc.close(output)     // a failed bootstrap leaves the descriptor with us
            return nil
        }
    }

    /// Greets, then reads until the end of the stream (or an error, or input
    /// that cannot be framed), each read's descriptors into the inbox, for
    /// the texts that end with the read's last byte or later, then its bytes
    /// answered, then older messages out of the inbox.  Then closes the
    /// channel, the socket and the inbox (descriptors no command took die with
    /// the connection).
    ///
    /// Why "the last byte": one read may join bytes sent before a message
    /// that carried descriptors to that message (the kernel stops a read after
    /// such a message, never before it), so the descriptors belong to the
    /// read's tail.  A text completed earlier in the read was sent before them
    /// (qemu.qmp's `getfd` sent, then the next descriptor on a space); the
    /// text the last byte completes was sent with them (libvirt sends the
    /// descriptor with the command's own bytes).
    static func read(_ socket: UnixSocketConnection, into input: QMPInput) {
        var input = input
        input.greet()
        var offset = 0
        while let message = try? socket.receive(), !message.bytes.isEmpty {
            offset += message.bytes.count
            input.inbox.deliver(message.descriptors, forTextsEndingFrom: offset)
            guard input.read(message.bytes) else { break }
            input.inbox.keepLatest()
        }
        input.connections.remove(input.channel)
        input.channel.close(promise: nil)
        socket.close()
        input.inbox.close()
    }
}
