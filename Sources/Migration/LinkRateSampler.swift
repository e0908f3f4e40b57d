import Foundation
import Synchronization

/// Ferry's own: how fast the main channel's bytes reach the other side, sampled
/// every 20 ms during precopy from TCP's count of delivered segments, for the
/// pace of postcopy's background (`PostcopyPacing.linkRate`).
///
/// A 100 ms window of what precopy sent reads low whenever part of it went to
/// something else (zero pages scanned, a sync, TCP recovering a loss): on a
/// shaped 1 Gbit/s link the windows' estimate ranged from 46 to 115 MB/s over
/// runs, and the postcopy phase's length with it.  A short sample taken while
/// the link's queue was full reads the link itself, so the upper samples do.
final class LinkRateSampler: Sendable {
    static let interval: Duration = .milliseconds(20)
    /// Samples kept: the last two seconds.
    static let kept = 100

    /// What the sampling thread and its owner share.
    final class Shared: Sendable {
        let samples = Mutex<[Double]>([])
        let stopping = Atomic<Bool>(false)
    }

    let shared = Shared()
    let thread: JoinableThread

    /// Starts sampling `channel` on a thread of its own; it ends at once if the
    /// channel has no delivered count (not TCP).
    init(_ channel: any ByteChannel) {
        let shared = self.shared
        thread = JoinableThread(name: "mig/src/link") {
            var last: (at: ContinuousClock.Instant, delivered: UInt64)?
            while !shared.stopping.load(ordering: .relaxed) {
                guard let delivered = channel.deliveredBytes() else { return }
                let now = ContinuousClock.now
                if let last, delivered >= last.delivered, now > last.at {
                    let rate = Double(delivered - last.delivered) / PrecopySource.seconds(now - last.at)
                    shared.samples.withLock { s in
                        s.append(rate)
                        if s.count > Self.kept { s.removeFirst(s.count - Self.kept) }
                    }
                }
                last = (now, delivered)
                Thread.sleep(forTimeInterval: PrecopySource.seconds(Self.interval))
            }
        }
    }

    /// The samples so far, oldest first.
    var rates: [Double] { shared.samples.withLock { $0 } }

    /// Takes no more samples: the thread ends within an interval (the switch
    /// to postcopy does not wait for it).
    func finish() {
        shared.stopping.store(true, ordering: .relaxed)
    }

    /// `finish`, and waits for the thread to end.
    func stop() {
        finish()
        thread.join()
    }
}
