import MigrationProtocol
import Glibc
import Synchronization

/// The sending end of a stream: frames payloads onto a channel, numbers them
/// and keeps the stream digest the `end` frame carries, counts the bytes and
/// applies the bandwidth limit (QEMU's rate limiter: a budget per 100 ms
/// window, waiting out the window when it is spent).
public final class StreamWriter: Sendable {
    let channel: any ByteChannel
    struct Counters {
        var bytes: UInt64 = 0
        var windowStart = ContinuousClock.now
        var windowBytes: UInt64 = 0
        /// Bytes per second; 0 = unlimited.
        var limit: UInt64 = 0
        var digest = StreamDigest()
    }
    let counters = Mutex(Counters())
    static let window: Duration = .milliseconds(100)

    public init(channel: any ByteChannel) { self.channel = channel }

    /// Every byte written so far, framing included.
    public var bytesWritten: UInt64 { counters.withLock { $0.bytes } }

    /// Sets the bandwidth limit in bytes per second (0: none); takes effect at once.
    public func setRateLimit(_ bytesPerSecond: UInt64) { counters.withLock { $0.limit = bytesPerSecond } }

    public func sendStreamHeader() throws(MigrationError) { try write(StreamHeader.encode()) }

    /// One frame: header, payload, checksum.  A small frame goes out in one
    /// write; a page batch in three, so its megabyte is never copied again.
    /// Frames are numbered in the order they are sent; one thread sends.
    public func send(_ kind: FrameKind, payload: [UInt8]) throws(MigrationError) {
        let checksum = FrameChecksum.of(payload.span)
        let sequence = counters.withLock { $0.digest.frames }
        let header = FrameHeader.encode(kind, sequence: sequence, payloadLength: payload.count)
        if payload.count < Self.coalesceLimit {
            try write(header + payload + FrameHeader.trailer(checksum: checksum))
        } else {
            try write(header)
            try write(payload)
            try write(FrameHeader.trailer(checksum: checksum))
        }
        counters.withLock { $0.digest.add(kind: kind, payloadLength: payload.count, checksum: checksum) }
    }

    /// The last frame: the count and digest of every frame before it.
    public func sendEnd() throws(MigrationError) {
        let end = EndOfStream(counters.withLock { $0.digest })
        try send(.end, payload: end.encode())
    }

    static let coalesceLimit = 64 << 10

    private func write(_ bytes: [UInt8]) throws(MigrationError) {
        do { try channel.write(bytes) } catch { throw .channel(error) }
        counters.withLock {
            $0.bytes += UInt64(bytes.count)
            $0.windowBytes += UInt64(bytes.count)
        }
    }

    /// Whether this window's budget is spent (the caller should `waitForBudget`).
    public var isRateLimited: Bool {
        counters.withLock { c in c.limit != 0 && c.windowBytes >= c.limit / 10 }
    }

    /// Sleeps until the current window ends if its budget is spent; starts a new window when due.
    /// What a window sent beyond its budget (a frame is never cut) is charged to
    /// the next ones, so the limit holds on average, not only per window.
    public func waitForBudget() {
        let (limited, windowEnd) = counters.withLock { c in
            (c.limit != 0 && c.windowBytes >= c.limit / 10, c.windowStart + Self.window)
        }
        let now = ContinuousClock.now
        if limited && now < windowEnd {
            sleepUntil(windowEnd)
        }
        counters.withLock { c in
            let now = ContinuousClock.now
            guard now >= c.windowStart + Self.window else { return }
            let budget = c.limit / 10
            // Overshoot carries over only from the window that just ended, and only while limited.
            let late = now - c.windowStart >= Self.window * 2
            c.windowBytes = c.limit == 0 || late ? 0 : c.windowBytes - min(c.windowBytes, budget)
            c.windowStart = now
        }
    }
}

/// Blocks the calling (migration) thread until `instant`.
func sleepUntil(_ instant: ContinuousClock.Instant) {
    while true {
        let remaining = instant - ContinuousClock.now
        guard remaining > .zero else { return }
        let (seconds, attoseconds) = remaining.components
        _ = usleep(UInt32(min(seconds * 1_000_000 + attoseconds / 1_000_000_000_000, 1_000_000)))
    }
}
