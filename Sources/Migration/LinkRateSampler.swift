import Foundation
import Synchronization

/// Ferry's own: how many of the main channel's bytes have reached the other
/// side, counted every 20 ms during precopy from TCP's delivered segments, for
/// the pace of postcopy's background (`PostcopyPacing.linkRate`).
///
/// A 100 ms window of what precopy sent reads low whenever part of it went to
/// something else (zero pages scanned, a sync, TCP recovering a loss): on a
/// shaped 1 Gbit/s link the windows' estimate ranged from 46 to 115 MB/s over
/// runs, and the postcopy phase's length with it.  A stretch taken while the
/// link's queue was full reads the link itself, so the upper stretches do.
///
/// Every `capEvery` samples it also holds TCP's own pace (`SO_MAX_PACING_RATE`)
/// to `headroom` times the link's rate as the stretches show it so far (`cap`).
/// BBR paced precopy at up to two to four times a shaped 1 Gbit/s link (its
/// delivery samples read up to 200 MB/s where the link carries 119), and the
/// bottleneck's 1 ms queue dropped 2 000-5 700 segments a second: TCP then
/// spent part of every stretch recovering, and the link's estimate read 101-112
/// MB/s.  Held to 15 % over what the link delivered, precopy lost 130-1 000
/// segments a second and the estimate read higher (A/B in bench/README,
/// sixteenth session).  The cap rises with what the link delivers, by up to
/// `headroom` every `capEvery` samples, so it never holds back a faster link
/// for long; postcopy's pace replaces it at the switch.
final class LinkRateSampler: Sendable {
    static let interval: Duration = .milliseconds(20)
    /// Samples kept: the last two seconds.
    static let kept = 100
    /// How far over the link's measured rate TCP may pace precopy.
    static let headroom = 1.15
    /// The quantile of the stretches' rates the cap is taken from: near their
    /// top, the moments the link's queue stood full.
    static let capQuantile = 0.95
    /// Samples between two updates of the cap (100 ms).
    static let capEvery = 5

    /// The pace for the main channel's precopy given the counts so far; nil
    /// while there are too few (TCP paces as it will).
    static func cap(_ samples: [PostcopyPacing.Delivered]) -> UInt64? {
        PostcopyPacing.linkRate(samples, quantile: capQuantile).map { UInt64($0 * headroom) }
    }

    /// What the sampling thread and its owner share.
    final class Shared: Sendable {
        let samples = Mutex<[PostcopyPacing.Delivered]>([])
        let stopping = Atomic<Bool>(false)
        /// Whether the cap may still be set: `finish` clears it under the lock, so no
        /// cap lands after it returns (on the pace postcopy sets next).
        let capping = Mutex<Bool>(true)
    }

    let shared = Shared()
    let thread: JoinableThread

    /// Starts sampling `channel` on a thread of its own, holding its pace to
    /// `cap`; it ends at once if the channel has no delivered count (not TCP).
    init(_ channel: any ByteChannel) {
        let shared = self.shared
        thread = JoinableThread(name: "mig/src/link") {
            var taken = 0
            while !shared.stopping.load(ordering: .relaxed) {
                guard let delivered = channel.deliveredBytes() else { return }
                let sample = PostcopyPacing.Delivered(at: .now, bytes: delivered)
                let samples = shared.samples.withLock { s in
                    s.append(sample)
                    if s.count > Self.kept { s.removeFirst(s.count - Self.kept) }
                    return s
                }
                taken += 1
                if taken % Self.capEvery == 0, let cap = Self.cap(samples) {
                    shared.capping.withLock { allowed in if allowed { channel.limitPacing(cap) } }
                }
                Thread.sleep(forTimeInterval: PrecopySource.seconds(Self.interval))
            }
        }
    }

    /// The counts so far, oldest first.
    var samples: [PostcopyPacing.Delivered] { shared.samples.withLock { $0 } }

    /// Takes no more samples and sets no more caps once this returns: the thread
    /// ends within an interval (the switch to postcopy does not wait for it).
    func finish() {
        shared.stopping.store(true, ordering: .relaxed)
        shared.capping.withLock { $0 = false }
    }

    /// `finish`, and waits for the thread to end.
    func stop() {
        finish()
        thread.join()
    }
}
