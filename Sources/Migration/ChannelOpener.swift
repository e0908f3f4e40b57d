import GuestMemory
import Synchronization

/// How the source reaches its destination.  Opened on the migration thread,
/// so a slow connect never blocks the control plane; `cancel` abandons an
/// open in progress (QMP `migrate_cancel` during the connect).
public protocol ChannelOpener: Sendable {
    func open() throws(ChannelError) -> any ByteChannel
    func cancel()
}

/// A channel that is already open (tests, tools).  Cancelled before the
/// migration took it, it is shut down, so the peer sees the end.
public struct OpenChannel: ChannelOpener {
    let channel: any ByteChannel
    public init(_ channel: any ByteChannel) { self.channel = channel }
    public func open() throws(ChannelError) -> any ByteChannel { channel }
    public func cancel() { channel.shutdown() }
}

/// The source's channel before and after it is open: `shutdown` before the
/// open cancels the open, after it shuts the channel.
final class PendingChannel: ByteChannel {
    enum State { case pending, open(any ByteChannel), shut }
    let opener: any ChannelOpener
    let state = Mutex(State.pending)

    init(_ opener: any ChannelOpener) { self.opener = opener }

    /// Opens the channel; throws if it was shut (cancelled) before or during the open.
    func open() throws(ChannelError) {
        guard case .pending = state.withLock({ $0 }) else { throw Self.cancelled }
        let channel = try opener.open()
        let kept = state.withLock { s -> Bool in
            guard case .pending = s else { return false }
            s = .open(channel)
            return true
        }
        if !kept {
            channel.close()
            throw Self.cancelled
        }
    }

    static let cancelled = ChannelError.system("connect", errno: 125)

    var channel: any ByteChannel {
        get throws(ChannelError) {
            guard case .open(let channel) = state.withLock({ $0 }) else { throw Self.cancelled }
            return channel
        }
    }

    /// The open channel, for zero-copy sends (the engine sees only `ByteChannel`s).
    /// - Throws: ``ChannelError/zeroCopyUnavailable(errno:)`` if the channel has no
    ///   zero-copy sends; the cancellation error if it is not open.
    var zeroCopyChannel: any ZeroCopyChannel {
        get throws(ChannelError) {
            guard let zeroCopy = try channel as? any ZeroCopyChannel else { throw .zeroCopyUnavailable(errno: 95) }
            return zeroCopy
        }
    }

    func write(_ bytes: [UInt8]) throws(ChannelError) { try channel.write(bytes) }
    func write(_ list: borrowing GatherList) throws(ChannelError) { try channel.write(list) }
    func read(into list: borrowing ScatterList) throws(ChannelError) { try channel.read(into: list) }
    func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        try channel.read(upTo: count, into: &buffer, at: offset)
    }
    func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { try channel.waitReadable(timeout: timeout) }
    var hasReturnPath: Bool { (try? channel.hasReturnPath) ?? false }
    func pushUnsent(within limit: Duration) -> Bool { (try? channel.pushUnsent(within: limit)) ?? true }
    func limitUnsent(_ bytes: Int) { (try? channel)?.limitUnsent(bytes) }
    func limitPacing(_ bytesPerSecond: UInt64?) { (try? channel)?.limitPacing(bytesPerSecond) }
    func limitBursts(_ bytes: Int?) { (try? channel)?.limitBursts(bytes) }
    func shortenRetransmitWait(to least: Duration) { (try? channel)?.shortenRetransmitWait(to: least) }
    func deliveryRate() -> UInt64? { (try? channel)?.deliveryRate() }
    func deliveredBytes() -> UInt64? { (try? channel)?.deliveredBytes() }
    func queuedBytes() -> UInt64? { (try? channel)?.queuedBytes() }
    func queueDelay() -> Duration? { (try? channel)?.queueDelay() }
    func waitWritable(timeout: Duration) throws(ChannelError) -> Bool { try channel.waitWritable(timeout: timeout) }
    func makeDoorbell() -> (any ChannelDoorbell)? { (try? channel)?.makeDoorbell() }
    func waitWritable(timeout: Duration, orRung doorbell: (any ChannelDoorbell)?) throws(ChannelError) -> Bool {
        try channel.waitWritable(timeout: timeout, orRung: doorbell)
    }

    func shutdown() {
        let previous = state.withLock { s -> State in
            defer { if case .pending = s { s = .shut } }
            return s
        }
        switch previous {
        case .pending: opener.cancel()
        case .open(let channel): channel.shutdown()
        case .shut: break
        }
    }

    /// Closes the channel; a late `shutdown` (a cancel racing the end) then does nothing.
    func close() {
        let previous = state.withLock { s -> State in
            defer { s = .shut }
            return s
        }
        if case .open(let channel) = previous { channel.close() }
    }
}

