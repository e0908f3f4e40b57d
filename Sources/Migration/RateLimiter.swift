import Dispatch
import Glibc
import Synchronization

/// The bandwidth limit every channel of one migration shares (`max-bandwidth`
/// holds for their sum), and the count of every byte they sent.  QEMU's rate
/// limiter: a budget per 100 ms window; the migration thread waits out a
/// window whose budget is spent.  What a window sent beyond its budget (a
/// frame is never cut) is charged to the next one, so the limit holds on
/// average, not only per window.
public final class RateLimiter: Sendable {
    struct Window {
        var start = ContinuousClock.now
        var bytes: UInt64 = 0
        /// Bytes per second; 0 = unlimited.
        var limit: UInt64 = 0
        var total: UInt64 = 0
        /// Bytes promised to channels but not written yet (multifd's queued pages):
        /// they count against the window, so queues cannot burst past the limit.
        var reserved: UInt64 = 0
        /// Whether `waitForBudget` waits for a promise to be handed back (`handedBack`).
        var awaitingRelease = false

        var spent: Bool { limit != 0 && bytes + reserved >= limit / 10 }
    }
    let window = Mutex(Window())
    /// Signalled by `release` when `waitForBudget` waits on promised bytes.
    let handedBack = DispatchSemaphore(value: 0)
    static let period: Duration = .milliseconds(100)

    public init() {}

    /// Every byte any channel has sent.
    public var totalBytes: UInt64 { window.withLock { $0.total } }

    /// Sets the limit in bytes per second (0: none); takes effect at once.
    public func setLimit(_ bytesPerSecond: UInt64) { window.withLock { $0.limit = bytesPerSecond } }

    /// Counts bytes a channel sent.
    public func charge(_ bytes: Int) {
        window.withLock {
            $0.bytes += UInt64(bytes)
            $0.total += UInt64(bytes)
        }
    }

    /// Promises `bytes` to a channel that will write (and `charge`) them later.
    public func reserve(_ bytes: Int) { window.withLock { $0.reserved += UInt64(bytes) } }

    /// A promise kept (the bytes were charged as written) or dropped.
    public func release(_ bytes: Int) {
        let waiter = window.withLock { w in
            w.reserved -= min(w.reserved, UInt64(bytes))
            defer { w.awaitingRelease = false }
            return w.awaitingRelease
        }
        if waiter { handedBack.signal() }
    }

    /// Whether this window's budget is spent, promised bytes included (the caller should `waitForBudget`).
    public var isLimited: Bool { window.withLock { $0.spent } }

    /// Sleeps while the current window's budget is spent, until it ends; starts
    /// a new window when due.  While bytes are promised it also wakes when a
    /// promise is handed back: a job that turned out mostly zero pages wrote a
    /// few bytes of the whole pages it promised, and the caller goes on in the
    /// same window (multifd at 16 MiB/s sent 10.6 MiB/s of a guest with zero
    /// pages when it slept to the end).
    public func waitForBudget() {
        while true {
            let (limited, end, promised) = window.withLock { w in
                let promised = w.spent && w.reserved > 0
                if promised { w.awaitingRelease = true }
                return (w.spent, w.start + Self.period, promised)
            }
            let now = ContinuousClock.now
            guard limited && now < end else { break }
            if promised {
                // A signal left from an earlier wait only makes this look once more.
                let (seconds, attoseconds) = (end - now).components
                _ = handedBack.wait(timeout: .now() + .nanoseconds(Int(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)))
            } else {
                sleepUntil(end)
            }
        }
        window.withLock { $0.awaitingRelease = false }
        renewIfDue()
    }

    /// Starts a new window if one is due, without sleeping (for a caller that waits in short steps).
    public func renewIfDue() {
        window.withLock { w in
            let now = ContinuousClock.now
            guard now >= w.start + Self.period else { return }
            let budget = w.limit / 10
            // Overshoot carries over only from the window that just ended, and only while limited.
            let late = now - w.start >= Self.period * 2
            w.bytes = w.limit == 0 || late ? 0 : w.bytes - min(w.bytes, budget)
            w.start = now
        }
    }
}

/// Blocks the calling thread until `instant`.
func sleepUntil(_ instant: ContinuousClock.Instant) {
    while true {
        let remaining = instant - ContinuousClock.now
        guard remaining > .zero else { return }
        let (seconds, attoseconds) = remaining.components
        _ = usleep(UInt32(min(seconds * 1_000_000 + attoseconds / 1_000_000_000_000, 1_000_000)))
    }
}
