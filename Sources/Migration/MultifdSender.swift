import Compression
import DequeModule
import Dispatch
import Foundation
import GuestMemory
import HostThreads
import MigrationProtocol
import Synchronization

/// The source's multifd channels: one sending thread per channel, each with a
/// short queue of page jobs.  The migration thread picks pages (no I/O, no
/// lock held while a channel writes) and hands each job to the channel with
/// the most room; a channel thread checksums and sends it.
///
/// After every dirty sync each channel gets a `sync` frame, in queue order:
/// the destination applies nothing after a channel's `sync` until every
/// channel has applied everything before its own, so an old copy of a page
/// (sent before the sync on one channel) never lands after a newer copy (sent
/// after it on another).  Between two syncs a page is picked at most once.
///
/// The hand-off is a short lock on the queues and two kinds of counting
/// semaphore: one per channel (items waiting for it) and one for free job
/// slots (room for the picker).  A thread sleeps only when it has nothing to
/// do, and wakes only the one thread that now has something: on a host whose
/// cores are all busy, threads that woke each other through one shared
/// condition spent their time queueing for its lock.
final class MultifdSender: Sendable {
    enum Item: Sendable {
        case pages(PageJob)
        case sync(UInt64)
        case end
    }

    struct Queues {
        var items: [Deque<Item>]
        /// Page jobs queued per channel (sync and end do not count against the room).
        var jobs: [Int]
        var queuedPages = 0
        var epoch: UInt64 = 0
        var failure: MigrationError?
        var next = 0
        /// Per channel: pages sent as data and as zero; bytes and frames written.
        var pages: [(normal: UInt64, zero: UInt64)]
        var bytes: [(bytes: UInt64, frames: UInt64)]
    }

    /// Page jobs a channel may have waiting: enough to keep it busy while the
    /// picker works, few enough that a sync is not held up behind many.
    static let queueDepth = 2

    let channels: [any ByteChannel]
    let limiter: RateLimiter
    let state: Mutex<Queues>
    /// Per channel: signalled once for every item queued for it (and once more at a failure).
    let waiting: [DispatchSemaphore]
    /// Free job slots over all channels (`queueDepth` each); a failure adds one to wake the picker.
    let slots = DispatchSemaphore(value: 0)
    /// Every channel thread is in it until it returns.
    let running = DispatchGroup()
    /// Pages the picker hands a channel at a time.
    let jobPages: Int
    /// Told once when the sender fails or is aborted (a file saver's barrier lets its waiters go).
    let onFailure: @Sendable () -> Void

    /// Starts one thread per worker; each thread makes its worker with `makeWorker(index)`
    /// and owns it.  `channels` (none for a file) are shut on failure and closed by `close`.
    init(workers count: Int, channels: [any ByteChannel], limiter: RateLimiter, jobPages: Int = RAMMigration.jobPages,
         onFailure: @escaping @Sendable () -> Void = {},
         makeWorker: @escaping @Sendable (Int) throws(MigrationError) -> any ChannelWorker) {
        precondition(count > 0 && jobPages > 0)
        self.jobPages = jobPages
        self.channels = channels
        self.limiter = limiter
        self.onFailure = onFailure
        state = Mutex(Queues(items: Array(repeating: [], count: count), jobs: Array(repeating: 0, count: count),
                             pages: Array(repeating: (0, 0), count: count), bytes: Array(repeating: (0, 0), count: count)))
        // Made at 0 and signalled up: a semaphore freed below its starting value is a libdispatch fault.
        waiting = (0..<count).map { _ in DispatchSemaphore(value: 0) }
        for _ in 0..<(count * Self.queueDepth) { slots.signal() }
        for index in 0..<count {
            running.enter()
            HostThread.start("mig/src/send_\(index)") { [self] in
                defer { running.leave() }
                let worker: any ChannelWorker
                do throws(MigrationError) { worker = try makeWorker(index) } catch {
                    fail(error)
                    return
                }
                run(index, worker)
            }
        }
    }

    /// Multifd on sockets: one `StreamPageWorker` per channel.  `channels[i]` has had
    /// its stream header sent through `writers[i]`.
    convenience init(channels: [any ByteChannel], writers: [StreamWriter], mappings: [HostMapping], detection: ZeroPageDetection,
                     statistics: RAMCounters, zstdLevel: Int?, zeroCopy: [any ZeroCopyChannel]? = nil) {
        precondition(channels.count == writers.count && !channels.isEmpty)
        self.init(workers: channels.count, channels: channels, limiter: writers[0].limiter) { index throws(MigrationError) in
            let compressor: ZstdCompressor?
            do { compressor = try zstdLevel.map { try ZstdCompressor(level: $0) } } catch { throw .state("zstd: \(error)") }
            // Detection on the channel only with `multifd`; `legacy` happened in the picker.
            return StreamPageWorker(PageSender(writer: writers[index], mappings: mappings, detection: detection == .multifd ? .multifd : .none,
                                               statistics: statistics, compressor: compressor, zeroCopy: zeroCopy?[index]))
        }
    }

    var channelStatistics: [ChannelStatistics] {
        let (pages, bytes) = state.withLock { ($0.pages, $0.bytes) }
        return pages.indices.map { index in
            var s = ChannelStatistics(role: .multifd, index: index)
            (s.normalPages, s.zeroPages) = pages[index]
            (s.bytes, s.frames) = bytes[index]
            return s
        }
    }

    /// Dirty syncs so far: the epoch the pages queued now belong to.
    var epoch: UInt64 { state.withLock { $0.epoch } }

    /// Pages handed to channels and not yet sent.
    var queuedPages: Int { state.withLock { $0.queuedPages } }

    /// Queues `job` on the channel with the most room, waiting while all are
    /// full; throws the first channel's failure.  One thread picks.
    func send(_ job: PageJob) throws(MigrationError) {
        if let failure { throw failure }
        slots.wait()
        let chosen = try state.withLock { q throws(MigrationError) -> Int in
            if let failure = q.failure { throw failure }
            // A slot is free, so some channel has room: round robin among the fewest jobs waiting.
            let least = q.jobs.min()!
            var i = q.next
            while q.jobs[i] != least { i = (i + 1) % q.jobs.count }
            q.items[i].append(.pages(job))
            q.jobs[i] += 1
            q.queuedPages += job.count
            q.next = (i + 1) % q.jobs.count
            return i
        }
        // Counted against the bandwidth limit now, charged when written.
        limiter.reserve(job.count * PageSender.pageSize)
        waiting[chosen].signal()
    }

    /// A dirty sync happened: every channel sends a `sync` frame after what it has queued.
    func sync() throws(MigrationError) {
        try enqueueOnAll { q in
            q.epoch += 1
            return .sync(q.epoch)
        }
    }

    /// The last pages are queued: every channel sends its `end`; waits until all
    /// have, and throws the first failure.
    func finish() throws(MigrationError) {
        try enqueueOnAll { _ in .end }
        running.wait()
        if let failure { throw failure }
    }

    /// The first channel's failure, if one failed (its queued jobs are dropped:
    /// whoever waits for them to be written must look here).
    var failure: MigrationError? { state.withLock { $0.failure } }

    /// Stops every channel now (failure or cancel): blocked writes fail, threads end.
    func abort() {
        fail(.cancelled)
    }

    private func enqueueOnAll(_ item: (inout Queues) -> Item) throws(MigrationError) {
        try state.withLock { q throws(MigrationError) in
            if let failure = q.failure { throw failure }
            let next = item(&q)
            for i in q.items.indices { q.items[i].append(next) }
        }
        for semaphore in waiting { semaphore.signal() }
    }

    private func fail(_ error: MigrationError) {
        let first = state.withLock { q -> Bool in
            guard q.failure == nil else { return false }
            q.failure = error
            return true
        }
        guard first else { return }
        for channel in channels { channel.shutdown() }
        onFailure()
        // Whoever sleeps wakes and sees the failure.
        for semaphore in waiting { semaphore.signal() }
        slots.signal()
    }

    /// The next item for channel `index`, waiting for one; nil once the sender failed.
    private func take(_ index: Int) -> Item? {
        waiting[index].wait()
        return state.withLock { q -> Item? in
            guard q.failure == nil, !q.items[index].isEmpty else { return nil }
            return q.items[index].removeFirst()
        }
    }

    /// Waits for every channel thread to end (after `finish`, or `abort`), then closes the channels (if any).
    func close() {
        running.wait()
        for channel in channels { channel.close() }
    }

    private func run(_ index: Int, _ worker: any ChannelWorker) {
        while let item = take(index) {
            do throws(MigrationError) {
                switch item {
                case .pages(let job):
                    try worker.send(job)
                    limiter.release(job.count * PageSender.pageSize)
                    let (sent, written) = (worker.pages, worker.written)
                    state.withLock { q in
                        q.pages[index] = sent
                        q.bytes[index] = written
                        q.jobs[index] -= 1
                        q.queuedPages -= job.count
                    }
                    slots.signal()          // room for the picker
                case .sync(let epoch):
                    try worker.sync(epoch: epoch)
                case .end:
                    try worker.end()
                    let written = worker.written
                    state.withLock { q in q.bytes[index] = written }
                    return
                }
            } catch {
                fail(error)
                return
            }
        }
    }
}

/// What one channel thread does with the items queued for it: pages into
/// `pages` frames on a socket (`StreamPageWorker`), or at their offsets in a
/// mapped-ram file (`FilePageWorker`).  Made and used by that thread only.
protocol ChannelWorker: AnyObject {
    func send(_ job: PageJob) throws(MigrationError)
    /// A dirty sync happened; everything before this came first.
    func sync(epoch: UInt64) throws(MigrationError)
    /// No more pages: the last thing this worker does.
    func end() throws(MigrationError)
    /// Pages sent as data and as zero.
    var pages: (normal: UInt64, zero: UInt64) { get }
    /// Bytes and frames written.
    var written: (bytes: UInt64, frames: UInt64) { get }
}

/// A multifd socket's worker: `pages` frames, a `sync` frame at each sync, `end` last.
final class StreamPageWorker: ChannelWorker {
    var sender: PageSender

    init(_ sender: consuming PageSender) { self.sender = sender }

    func send(_ job: PageJob) throws(MigrationError) { try sender.send(job) }

    func sync(epoch: UInt64) throws(MigrationError) {
        try sender.flushZeroCopy()
        try sender.writer.send(.sync, payload: SyncMarker.encode(epoch: epoch))
    }

    func end() throws(MigrationError) {
        try sender.flushZeroCopy()
        try sender.writer.sendEnd()
    }

    var pages: (normal: UInt64, zero: UInt64) { sender.pages }
    var written: (bytes: UInt64, frames: UInt64) { (sender.writer.bytesWritten, sender.writer.framesWritten) }
}
