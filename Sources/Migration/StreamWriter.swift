import GuestMemory
import MigrationProtocol
import Glibc
import Synchronization

/// The sending end of one channel's stream: frames payloads onto the channel,
/// numbers them and keeps the stream digest its `end` frame carries, and
/// charges every byte to the migration's shared `RateLimiter`.
/// One thread sends on a channel at a time.
public final class StreamWriter: Sendable {
    let channel: any ByteChannel
    public let limiter: RateLimiter
    struct Counters {
        var bytes: UInt64 = 0
        var encoder = FrameEncoder()
    }
    let counters = Mutex(Counters())

    public init(channel: any ByteChannel, limiter: RateLimiter = RateLimiter()) {
        self.channel = channel
        self.limiter = limiter
    }

    /// Every byte written on this channel so far, framing included.
    public var bytesWritten: UInt64 { counters.withLock { $0.bytes } }

    /// Frames sent so far on this channel.
    public var framesWritten: UInt64 { counters.withLock { $0.encoder.digest.frames } }

    /// Sets the shared bandwidth limit in bytes per second (0: none); takes effect at once.
    public func setRateLimit(_ bytesPerSecond: UInt64) { limiter.setLimit(bytesPerSecond) }

    /// The header that opens this channel's stream and names the channel.
    public func sendStreamHeader(_ identity: ChannelIdentity = .main) throws(MigrationError) {
        try write(StreamHeader.encode(identity))
    }

    /// One frame: header, payload, checksum.  A small frame goes out in one
    /// write; a large one as a gather write, so it is never copied again.
    public func send(_ kind: FrameKind, payload: [UInt8]) throws(MigrationError) {
        let (header, trailer) = counters.withLock { $0.encoder.frameParts(kind, payload: payload, tailLength: 0) }
        if payload.count < Self.coalesceLimit {
            try write(header + payload + trailer)
        } else {
            var list = GatherList(arenaCapacity: header.count + trailer.count)
            list.append(header)
            list.append(payload)
            list.append(trailer)
            try write(list)
        }
    }

    /// The bytes of a `pages` frame up to its tail (header, `index`, checksum),
    /// numbered as the next frame: the caller appends the `tailLength` bytes of
    /// the tail and writes the whole with `write(_:)`, in one gather write.
    public func pagesFrameHead(index: [UInt8], tailLength: Int) -> [UInt8] {
        let (header, trailer) = counters.withLock { $0.encoder.frameParts(.pages, payload: index, tailLength: tailLength) }
        return header + index + trailer
    }

    /// The last frame: the count and digest of every frame before it.
    public func sendEnd() throws(MigrationError) {
        let end = EndOfStream(counters.withLock { $0.encoder.digest })
        try send(.end, payload: end.encode())
    }

    static let coalesceLimit = 64 << 10

    public func write(_ bytes: [UInt8]) throws(MigrationError) {
        do { try channel.write(bytes) } catch { throw .channel(error) }
        account(bytes.count)
    }

    /// Writes `list` as it is (a frame head from `pagesFrameHead` and its tail).
    public func write(_ list: borrowing GatherList) throws(MigrationError) {
        guard !list.isEmpty else { return }
        do { try channel.write(list) } catch { throw .channel(error) }
        account(list.byteCount)
    }

    /// Writes guest pages with `MSG_ZEROCOPY` on `channel` (this writer's own
    /// channel, seen as zero-copy); the pages must stay mapped until `flushZeroCopy`.
    public func writeZeroCopy(_ list: borrowing GatherList, on channel: any ZeroCopyChannel) throws(MigrationError) {
        guard !list.isEmpty else { return }
        do { try channel.writeZeroCopy(list) } catch { throw .channel(error) }
        account(list.byteCount)
    }

    func account(_ count: Int) {
        counters.withLock { $0.bytes += UInt64(count) }
        limiter.charge(count)
    }

    // Kept for callers that treat the writer as the limiter (the single-channel migration).
    public var isRateLimited: Bool { limiter.isLimited }
    public func waitForBudget() { limiter.waitForBudget() }
}
