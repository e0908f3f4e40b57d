import GuestMemory

/// A byte stream between the two sides of a migration (a socket, a file, a
/// descriptor), as the engine sees it.  Blocking; one writer and one reader.
public protocol ByteChannel: Sendable {
    /// Writes all of `bytes` or throws.
    func write(_ bytes: [UInt8]) throws(ChannelError)
    /// Writes every segment of `list`, in order, or throws (descriptors: `writev`,
    /// so guest pages reach the kernel without a copy here).
    func write(_ list: borrowing GatherList) throws(ChannelError)
    /// Reads exactly `list.byteCount` bytes into its targets, in order (descriptors:
    /// `readv`, straight into guest RAM); `.endOfStream` if the stream ends first.
    func read(into list: borrowing ScatterList) throws(ChannelError)
    /// Reads what is there, at most `count` bytes, into `buffer[offset...]`
    /// (which must have room), waiting for at least one; 0 at the end of the stream.
    /// A TCP socket asked for a large count waits a little for all of it
    /// (`DescriptorChannel.readWhole`): the caller needs them all before it can go on.
    func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int
    /// Waits up to `timeout` for the next bytes; `false` if none came (for the return path).
    func waitReadable(timeout: Duration) throws(ChannelError) -> Bool
    /// Whether the other side can answer on this channel (sockets: yes; files: no).
    var hasReturnPath: Bool { get }
    /// Makes blocked and future reads and writes fail at once (cancel).
    func shutdown()
    func close()
    /// Sees that what was written has left: while the kernel holds some unsent
    /// (a TCP segment the local queue dropped is otherwise sent again only by a
    /// 200 ms timer), asks it to send again, up to `limit`.  Whether nothing is
    /// left unsent; channels without such a queue say true.
    @discardableResult
    func pushUnsent(within limit: Duration) -> Bool
    /// Bounds what the channel holds written but unsent to about `bytes` (a
    /// socket's own queue), so what is written next leaves soon after.
    func limitUnsent(_ bytes: Int)
    /// Paces what the channel sends to at most `bytesPerSecond` (nil: no limit).
    func limitPacing(_ bytesPerSecond: UInt64?)
    /// Sends what is written in trains of at most `bytes` (nil: as the transport
    /// groups it), so a shaped link's queue never holds a large one at once.
    func limitBursts(_ bytes: Int?)
    /// Resends what the other side has not acknowledged after `least` at the
    /// earliest (TCP's minimum retransmission timeout, which Linux takes from
    /// two ticks to 200 ms); ignored where the transport or kernel has no such
    /// setting, or outside that range.
    func shortenRetransmitWait(to least: Duration)
    /// The path's latest delivery rate as the transport measured it while the
    /// channel kept it busy, in bytes per second; nil when unknown.
    func deliveryRate() -> UInt64?
    /// About how many of the bytes written have reached the other side (TCP:
    /// the segments it counts delivered, times their size; it only grows); nil
    /// when the transport does not say.
    func deliveredBytes() -> UInt64?
    /// The bytes written that the other side has not yet acknowledged (TCP:
    /// unsent plus in flight); nil when the transport does not say.
    func queuedBytes() -> UInt64?
    /// How long the path's queues hold what the channel sends: its smoothed
    /// round trip less the least one seen (TCP); nil when the transport does not say.
    func queueDelay() -> Duration?
    /// Waits up to `timeout` until a write would go ahead without waiting long
    /// (under the `limitUnsent` bound); true at once for channels without one.
    func waitWritable(timeout: Duration) throws(ChannelError) -> Bool
    /// A doorbell that `waitWritable(timeout:orRung:)` also wakes for; nil when the
    /// channel has none (its waits then last their timeout).
    func makeDoorbell() -> (any ChannelDoorbell)?
    /// `waitWritable(timeout:)` that also returns, false unless writable, as soon
    /// as `doorbell` (made by this channel) rings; a ring is consumed by the wait it ends.
    func waitWritable(timeout: Duration, orRung doorbell: (any ChannelDoorbell)?) throws(ChannelError) -> Bool
}

/// Rung by one thread to wake another that waits on a channel (postcopy: a page
/// request arrived while the migration thread waits to write background pages).
/// A ring before the wait is not lost: the next wait returns at once.
public protocol ChannelDoorbell: AnyObject, Sendable {
    func ring()
    /// Waits up to `timeout` for a ring; whether one came (and is consumed).
    func wait(timeout: Duration) -> Bool
}

extension ByteChannel {
    /// Channels that are not TCP sockets hold nothing back.
    @discardableResult
    public func pushUnsent(within limit: Duration) -> Bool { true }
    public func limitUnsent(_ bytes: Int) {}
    public func limitPacing(_ bytesPerSecond: UInt64?) {}
    public func limitBursts(_ bytes: Int?) {}
    public func shortenRetransmitWait(to least: Duration) {}
    public func deliveryRate() -> UInt64? { nil }
    public func deliveredBytes() -> UInt64? { nil }
    public func queuedBytes() -> UInt64? { nil }
    public func queueDelay() -> Duration? { nil }
    public func waitWritable(timeout: Duration) throws(ChannelError) -> Bool { true }
    public func makeDoorbell() -> (any ChannelDoorbell)? { nil }
    public func waitWritable(timeout: Duration, orRung doorbell: (any ChannelDoorbell)?) throws(ChannelError) -> Bool {
        try waitWritable(timeout: timeout)
    }

    /// For channels that are not descriptors: one copy.
    public func write(_ list: borrowing GatherList) throws(ChannelError) { try write(list.flattened()) }

    /// For channels that are not descriptors: through a buffer.
    public func read(into list: borrowing ScatterList) throws(ChannelError) {
        var buffer = [UInt8](repeating: 0, count: list.byteCount)
        try readExactly(buffer.count, into: &buffer, at: 0)
        list.store(buffer, range: 0..<buffer.count)
    }

    /// Reads exactly `count` bytes into `buffer[offset...]`, which must have room;
    /// throws `.endOfStream` if the stream ends first.
    public func readExactly(_ count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) {
        var done = 0
        while done < count {
            let got = try read(upTo: count - done, into: &buffer, at: offset + done)
            if got == 0 { throw .endOfStream }
            done += got
        }
    }
}

public enum ChannelError: Error, Equatable, Sendable, CustomStringConvertible {
    case endOfStream
    case system(String, errno: Int32)
    case invalidURI(String)
    /// Nothing arrived for longer than the inactivity limit.
    case inactive(Duration)
    case connectFailed(uri: String, reason: String)
    /// A wait with a deadline ran out (`ChannelAcceptor.accept(timeout:)`); the
    /// text says what was awaited, and a caller may add to it.
    case timedOut(String)

    public var description: String {
        switch self {
        case .endOfStream: "the migration stream ended early (the other side closed it)"
        case .system(let what, let errno): "\(what): \(ChannelError.describe(errno))"
        case .invalidURI(let why): why
        case .connectFailed(let uri, let reason): "Failed to connect to '\(uri)': \(reason)"
        case .inactive(let limit): "nothing arrived from the other side for \(limit) (x-inactivity-limit)"
        case .timedOut(let what): what
        }
    }

    static func describe(_ errno: Int32) -> String {
        switch errno {
        case 1: "Operation not permitted"
        case 2: "No such file or directory"
        case 5: "Input/output error"
        case 9: "Bad file descriptor"
        case 12: "Cannot allocate memory"
        case 13: "Permission denied"
        case 17: "File exists"
        case 20: "Not a directory"
        case 21: "Is a directory"
        case 22: "Invalid argument"
        case 24: "Too many open files"
        case 27: "File too large"
        case 28: "No space left on device"
        case 30: "Read-only file system"
        case 32: "Broken pipe"
        case 88: "Socket operation on non-socket"
        case 95: "Operation not supported"
        case 98: "Address already in use"
        case 99: "Cannot assign requested address"
        case 101: "Network is unreachable"
        case 104: "Connection reset by peer"
        case 105: "No buffer space available"
        case 110: "Connection timed out"
        case 111: "Connection refused"
        case 113: "No route to host"
        case 122: "Disk quota exceeded"
        case 125: "Operation canceled"
        default: "errno \(errno)"
        }
    }
}
