import GuestMemory
import HostThreads
import MigrationProtocol
import Synchronization

/// A postcopy destination's `postcopy-preempt` channel: one thread loads the
/// pages the guest asked for (and, with 4 KiB pages, those the source sends
/// along with a run of them) as they come, beside the main channel's.  Pages
/// may arrive only after the switch to postcopy (nothing is asked before), and
/// the channel ends with its own `end`, checked like any stream's.
final class PreemptReceiver: Sendable {
    let channel: any ByteChannel
    /// The channel's way back, for the page requests (`DestinationLink.sendRequests`).
    let requests: ReturnPathWriter
    struct State {
        var finished = false
        var failure: MigrationError?
    }
    let state = Mutex(State())
    let thread = Mutex<JoinableThread?>(nil)
    let onFailure: @Sendable (MigrationError) -> Void

    /// Accepts the channel the plan announced and checks its handshake, which
    /// must arrive within `timeout` too: a connection that opens and says nothing
    /// (a stray client on a recovery's port, a source gone mid-handshake) must not
    /// hold the destination in `postcopy-recover` with its vCPUs waiting.
    static func accept(migrationID: [UInt8], from acceptor: any ChannelAcceptor, timeout: Duration) throws(MigrationError) -> any ByteChannel {
        let channel: any ByteChannel
        do { channel = try acceptor.acceptQuiet(timeout: timeout) } catch {
            throw .channel(.connectFailed(uri: "postcopy-preempt", reason: "the postcopy preempt channel did not arrive within \(timeout) (\(error))"))
        }
        let identity: ChannelIdentity
        do { identity = try ChannelIdentity.read(from: channel, what: "postcopy preempt connection", within: timeout) } catch {
            channel.close()
            throw error
        }
        guard identity.role == .postcopyPreempt, identity.index == 0 else {
            channel.close()
            throw .stream(.unexpectedFrame("a connection opened as the \(identity) where the postcopy preempt channel was due"))
        }
        guard identity.migrationID == migrationID else {
            channel.close()
            throw .stream(.unexpectedFrame("the postcopy preempt channel belongs to another migration"))
        }
        return channel
    }

    /// Starts loading from `channel` into `ram`.
    init(channel: any ByteChannel, ram: RAMMigration, onFailure: @escaping @Sendable (MigrationError) -> Void) {
        self.channel = channel
        requests = ReturnPathWriter(channel: channel)
        self.onFailure = onFailure
        let started = JoinableThread(name: "mig/dst/preempt") { [self] in receive(ram) }
        thread.withLock { $0 = started }
    }

    private func receive(_ ram: RAMMigration) {
        // The pages a faulting vCPU waits for.
        HostThread.makeUrgent()
        var reader = FrameReader(channel: channel)
        var scratch = PageLoadScratch()
        scratch.loader = 1
        var payload: [UInt8] = []
        do throws(MigrationError) {
            while true {
                let header = try reader.next(into: &payload)
                switch header.kind {
                case .pages:
                    guard ram.inPostcopy else {
                        throw .stream(.unexpectedFrame("pages on the postcopy preempt channel before the switch to postcopy"))
                    }
                    try ram.loadPages(header, payload: payload, from: &reader, scratch: &scratch)
                case .end:
                    state.withLock { $0.finished = true }
                    return
                default:
                    throw .stream(.unexpectedFrame("a frame of kind \(header.kind.rawValue) on the postcopy preempt channel"))
                }
            }
        } catch {
            let first = state.withLock { s -> Bool in
                guard s.failure == nil else { return false }
                s.failure = error
                return true
            }
            if first { onFailure(error) }
        }
    }

    /// Why the channel failed, if it did.
    var failure: MigrationError? { state.withLock { $0.failure } }

    /// Waits for the channel's `end`; throws its failure.
    func finish() throws(MigrationError) {
        thread.withLock { $0 }?.join()
        let (finished, failure) = state.withLock { ($0.finished, $0.failure) }
        if let failure { throw failure }
        if !finished { throw .stream(.truncated("the postcopy preempt channel ended without its end frame")) }
    }

    /// The load failed elsewhere: the channel stops; waits for its thread, then closes it.
    func abort() {
        state.withLock { if $0.failure == nil && !$0.finished { $0.failure = .cancelled } }
        // Shut first: a request write blocked on a full socket fails at once. Retired before
        // the close: no request lands on the descriptor once closed (its number may be reused).
        channel.shutdown()
        requests.retire("the postcopy preempt channel is closed")
        thread.withLock { $0 }?.join()
        channel.close()
    }
}
