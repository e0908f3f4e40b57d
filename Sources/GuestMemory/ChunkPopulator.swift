import Dispatch
import Foundation
import HostThreads
import Synchronization

/// Allocates chosen chunks of a mapping on a helper thread, ahead of a thread
/// that writes into them.  Writing fresh memory through page faults is the
/// slowest part of receiving a guest on this kind of host; done here, the
/// allocation runs in parallel with the receive, and the writer finds its pages
/// there.  The helper skips chunks the writer has already passed.
public final class ChunkPopulator: Sendable {
    public let chunkBytes: Int
    /// When the writer has caught up, the helper jumps this many chunks past it
    /// rather than allocating the chunk the writer is faulting in itself.
    static let lead = 2
    let mapping: HostMapping
    let chunks: DirtyBitmap
    /// The chunk the writer last wrote, -1 before it starts.
    let writerChunk = Atomic<Int>(-1)
    let stopRequested = Atomic<Bool>(false)
    let stopped = Atomic<Bool>(false)
    let finished = DispatchSemaphore(value: 0)

    /// Starts allocating the chunks set in `chunks` (chunk `i` is bytes
    /// `[i * chunkBytes, (i + 1) * chunkBytes)` of `mapping`), lowest first.
    public static func start(mapping: HostMapping, chunks: DirtyBitmap, chunkBytes: Int) -> ChunkPopulator {
        let populator = ChunkPopulator(mapping: mapping, chunks: chunks, chunkBytes: chunkBytes)
        // A thread of its own: on dispatch's shared pool (two threads here, shared with
        // Swift's tasks) it could wait to start, and `stop` waits for it.
        HostThread.start("ferry-populate") {
            populator.runToEnd()
            populator.finished.signal()
        }
        return populator
    }

    init(mapping: HostMapping, chunks: DirtyBitmap, chunkBytes: Int) {
        precondition(chunkBytes > 0 && chunkBytes % PageSize.base.byteCount == 0)
        precondition(chunks.pageCount == (mapping.byteCount + chunkBytes - 1) / chunkBytes)
        self.mapping = mapping
        self.chunks = chunks
        self.chunkBytes = chunkBytes
    }

    /// Allocates the wanted chunks from the writer's position on, until done or stopped.
    func runToEnd() {
        var chunk = 0
        while !stopRequested.load(ordering: .relaxed) {
            let writer = writerChunk.load(ordering: .relaxed)
            if writer >= chunk { chunk = writer + Self.lead }
            guard let next = chunks.nextSetPage(from: chunk) else { return }
            let offset = next * chunkBytes
            mapping.populate(offset: offset, count: min(chunkBytes, mapping.byteCount - offset))
            chunk = next + 1
        }
    }

    /// The writer is at byte `offset`: chunks before it need no help any more.
    public func writerReached(offset: Int) {
        writerChunk.store(offset / chunkBytes, ordering: .relaxed)
    }

    /// Stops the helper and waits for it (at most the chunk in progress).  Idempotent.
    public func stop() {
        stopRequested.store(true, ordering: .relaxed)
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        finished.wait()
    }
}
