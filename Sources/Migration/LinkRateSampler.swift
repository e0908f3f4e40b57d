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
final class LinkRateSampler: Sendable {
    static let interval: Duration = .milliseconds(20)
    /// Samples kept: the last two seconds.
    static let kept = 100

    /// What the sampling thread and its owner share.
    final class Shared: Sendable {
        let samples = Mutex<[PostcopyPacing.Delivered]>([])
        let stopping = Atomic<Bool>(false)
    }

    let shared = Shared()
    let thread: JoinableThread

    /// Starts sampling `channel` on a thread of its own; it ends at once if the
    /// channel has no delivered count (not TCP).
    init(_ channel: any ByteChannel) {
        let shared = self.shared
        thread = JoinableThread(name: "mig/src/link") {
            while !shared.stopping.load(ordering: .relaxed) {
                guard let delivered = channel.deliveredBytes() else { return }
                let sample = PostcopyPacing.Delivered(at: .now, bytes: delivered)
                shared.samples.withLock { s in
                    s.append(sample)
                    if s.count > Self.kept { s.removeFirst(s.count - Self.kept) }
                }
                Thread.sleep(forTimeInterval: PrecopySource.seconds(Self.interval))
            }
        }
    }

    /// The counts so far, oldest first.
    var samples: [PostcopyPacing.Delivered] { shared.samples.withLock { $0 } }

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
