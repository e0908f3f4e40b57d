import Foundation
import HostThreads
import MigrationProtocol
import Synchronization

/// The destination's multifd channels: accepted and checked against the main
/// channel's plan, then one receiving thread each, loading pages in parallel
/// and meeting at every `sync`.
final class MultifdReceivers: Sendable {
    struct State {
        var finished = 0
        var exited = 0
        var failure: MigrationError?
    }
    let channels: [any ByteChannel]
    let barrier: SyncBarrier
    let state = Mutex(State())
    let condition = NSCondition()
    /// Told once when a channel fails (the main thread is waiting on its own channel).
    let onFailure: @Sendable (MigrationError) -> Void

    /// Takes `plan.multifd` connections from `acceptor` within `timeout` in all,
    /// each opening with a multifd identity of this migration, every index once
    /// (its header within what is left of `timeout`, and at least a second).
    static func accept(_ count: Int, migrationID: [UInt8], from acceptor: any ChannelAcceptor,
                       timeout: Duration) throws(MigrationError) -> [any ByteChannel] {
        var channels = [(any ByteChannel)?](repeating: nil, count: count)
        let deadline = ContinuousClock.now + timeout
        do throws(MigrationError) {
            for _ in 0..<count {
                let remaining = deadline - .now
                let channel: any ByteChannel
                do { channel = try acceptor.accept(timeout: max(remaining, .zero)) } catch {
                    let missing = channels.indices.filter { channels[$0] == nil }.map(String.init).joined(separator: ", ")
                    throw MigrationError.channel(.connectFailed(uri: "multifd", reason:
                        "multifd channel(s) \(missing) did not arrive within \(timeout) (\(error))"))
                }
                let identity: ChannelIdentity
                do {
                    identity = try ChannelIdentity.read(from: channel, what: "multifd connection",
                                                        within: max(deadline - .now, .seconds(1)))
                } catch {
                    channel.close()
                    throw error
                }
                guard identity.role == .multifd else {
                    channel.close()
                    throw MigrationError.stream(.unexpectedFrame("a connection opened as the \(identity) where multifd channels were due"))
                }
                guard identity.migrationID == migrationID else {
                    channel.close()
                    throw MigrationError.stream(.unexpectedFrame("multifd channel \(identity.index) belongs to another migration"))
                }
                guard Int(identity.index) < count else {
                    channel.close()
                    throw MigrationError.stream(.unexpectedFrame("multifd channel index \(identity.index), but the source announced \(count) channels"))
                }
                guard channels[Int(identity.index)] == nil else {
                    channel.close()
                    throw MigrationError.stream(.unexpectedFrame("multifd channel \(identity.index) arrived twice"))
                }
                channels[Int(identity.index)] = channel
            }
        } catch {
            for channel in channels { channel?.close() }
            throw error
        }
        return channels.map { $0! }
    }

    /// Starts one loading thread per channel.
    /// `onApplied` hears each epoch once every channel has passed its sync (every page before it is in RAM).
    init(channels: [any ByteChannel], ram: RAMMigration, onApplied: @escaping @Sendable (UInt64) -> Void = { _ in },
         onFailure: @escaping @Sendable (MigrationError) -> Void) {
        self.channels = channels
        self.onFailure = onFailure
        barrier = SyncBarrier(parties: channels.count, onPassed: onApplied)
        for (index, channel) in channels.enumerated() {
            HostThread.start("mig/dst/recv_\(index)") { [self] in receive(channel, ram: ram) }
        }
    }

    private func receive(_ channel: any ByteChannel, ram: RAMMigration) {
        defer {
            state.withLock { $0.exited += 1 }
            condition.wakeAll()
        }
        var reader = FrameReader(channel: channel)
        var scratch = PageLoadScratch()
        var payload: [UInt8] = []
        do throws(MigrationError) {
            while true {
                let header = try reader.next(into: &payload)
                switch header.kind {
                case .pages:
                    try ram.loadPages(header, payload: payload, from: &reader, scratch: &scratch)
                case .sync:
                    let epoch: UInt64
                    do { epoch = try SyncMarker.decode(payload) } catch { throw .stream(error) }
                    try barrier.arrive(epoch: epoch)
                case .end:
                    try barrier.leave()
                    state.withLock { $0.finished += 1 }
                    condition.wakeAll()
                    return
                default:
                    throw .stream(.unexpectedFrame("a frame of kind \(header.kind.rawValue) on a multifd channel"))
                }
            }
        } catch {
            fail(error, notify: true)
        }
    }

    private func fail(_ error: MigrationError, notify: Bool) {
        let first = state.withLock { s -> Bool in
            // A channel released from the barrier by another's failure reports that one.
            guard s.failure == nil else { return false }
            s.failure = error
            return true
        }
        guard first else { return }
        barrier.abort()
        for channel in channels { channel.shutdown() }
        if notify { onFailure(error) }
        condition.wakeAll()
    }

    /// The first channel failure, if any.
    var failure: MigrationError? { state.withLock { $0.failure } }

    /// Waits until every channel has read its `end`; throws the first failure.
    func finish() throws(MigrationError) {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let done = try state.withLock { s throws(MigrationError) -> Bool in
                if let failure = s.failure { throw failure }
                return s.finished == channels.count
            }
            if done { return }
            condition.wait()
        }
    }

    /// The load failed elsewhere: every channel stops.
    func abort(_ reason: MigrationError) {
        fail(reason, notify: false)
    }

    /// Waits for every loading thread to end (after `finish`, or `abort`), then closes the channels.
    func close() {
        condition.lock()
        while state.withLock({ $0.exited }) < channels.count { condition.wait() }
        condition.unlock()
        for channel in channels { channel.close() }
    }
}
