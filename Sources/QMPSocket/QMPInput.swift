import Dispatch
import HostIO
import NIOCore
import QMP
import Synchronization

/// One QMP connection's input, on its reader thread: the greeting, then each
/// JSON text through a `QMPSession`.  A command runs on this thread, one at a
/// time across connections (`QMPCommands`), and its reply goes to the
/// connection's output channel.  A command that takes a
/// passed descriptor (`getfd`, `add-fd`) takes it from `inbox` as it is
/// decoded, so it gets the descriptor sent for it.
///
/// Running here, not on a queue behind the event loop, a `query-migrate` costs
/// two thread wake-ups (this reader's, then the event loop's to write), not four.
struct QMPInput {
    private var session = QMPSession()
    private var framer = JSONTextFramer()
    let version: QMPVersion
    let channel: any Channel
    let commands: QMPCommands
    let connections: Connections
    let inbox: DescriptorInbox

    init(version: QMPVersion, channel: any Channel, commands: QMPCommands, connections: Connections, inbox: DescriptorInbox) {
        self.version = version
        self.channel = channel
        self.commands = commands
        self.connections = connections
        self.inbox = inbox
    }

    /// Sends QEMU's greeting: the first thing the connection writes.
    func greet() {
        send(QMPSession.greeting(version: version))
    }

    /// Frames and answers the texts that the next read, `bytes`, completes.
    /// False once the connection is closing: its input cannot be framed (said
    /// to the client), or its channel closed (a client that left too much
    /// output unread is dropped, and what it had sent meanwhile goes unanswered).
    mutating func read(_ bytes: [UInt8]) -> Bool {
        framer.append(bytes)
        while channel.isActive {
            let text: JSONText?
            do { text = try framer.next() } catch {
                // Oversized or unbalanced input: say so and drop the connection.
                send(QMPSession.error(.generic("JSON parse error, \(error)"), id: nil))
                channel.close(promise: nil)
                return false
            }
            guard let text else { return true }
            answer(text)
        }
        return false
    }

    private mutating func answer(_ text: JSONText) {
        let wasNegotiating = session.phase == .negotiating
        switch session.step(text.bytes) {
        case .reply(let reply):
            send(reply)
            if wasNegotiating && session.phase == .commandMode { connections.add(channel) }
        case .execute(let command, let id):
            // A descriptor the command does not take (it failed) is closed once it has run.
            let descriptor = command.takesDescriptor ? inbox.takeFirst(forTextEndingAt: text.end) : nil
            let result = commands.execute(command, descriptor)
            let reply = switch result {
            case .success(let value): QMPSession.success(value, id: id)
            case .failure(let error): QMPSession.error(error, id: id)
            }
            descriptor?.close()     // a no-op if the command took it
            // A command refused (an HMP `quit` with no such CPU) has nothing to follow.
            let succeeded = if case .success = result { true } else { false }
            commands.reply(reply, to: succeeded ? command : nil, on: channel)
        }
    }

    private func send(_ text: String) {
        channel.writeAndFlush(ByteBuffer(string: text + "\r\n"), promise: nil)
    }
}

/// The server's commands: run one at a time, whichever connection sent them
/// (a `stop` waits for the vCPUs to park), and what follows a reply (`quit`).
final class QMPCommands: Sendable {
    private let executor: QMPServer.Executor
    private let afterReply: QMPServer.AfterReply
    /// Whose turn it is: held while a command runs.
    private let turn = Mutex<Void>(())
    /// Where what follows a reply runs.
    private let followers = DispatchQueue(label: "ferry.qmp.after-reply")

    init(executor: @escaping QMPServer.Executor, afterReply: @escaping QMPServer.AfterReply) {
        self.executor = executor
        self.afterReply = afterReply
    }

    func execute(_ command: QMPCommand, _ descriptor: ReceivedDescriptor?) -> Result<JSONValue, QMPError> {
        turn.withLock { _ in executor(command, descriptor) }
    }

    /// Writes `reply` to `channel`, not waiting for it to be flushed: a client
    /// that stops reading its replies would hold every client's commands behind
    /// its flush.  What follows a reply (quit) runs once it is flushed, or after
    /// a second at most, in its turn among the commands (no command runs half
    /// before and half after a quit); a command with nothing to follow costs no
    /// more wake-ups.
    /// `command`: the command that succeeded (nil: none, or it failed).
    func reply(_ reply: String, to command: QMPCommand?, on channel: any Channel) {
        let bytes = ByteBuffer(string: reply + "\r\n")
        guard let follow = command.flatMap(afterReply) else {
            channel.writeAndFlush(bytes, promise: nil)
            return
        }
        let once = Once()
        let run: @Sendable () -> Void = { [self] in
            if once.claim() { followers.async { self.turn.withLock { _ in follow() } } }
        }
        channel.writeAndFlush(bytes).whenComplete { _ in run() }
        channel.eventLoop.scheduleTask(in: .seconds(1)) { run() }
    }
}

/// Claimed by the first caller only.
final class Once: Sendable {
    private let claimed = Atomic<Bool>(false)
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }
}
