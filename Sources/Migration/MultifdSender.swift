import Compression
import Foundation
import GuestMemory
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
final class MultifdSender: Sendable {
    enum Item: Sendable {
        case pages(PageJob)
        case sync(UInt64)
        case end
    }

    struct Queues {
        var items: [[Item]]
        /// Page jobs queued per channel (sync and end do not count against the room).
        var jobs: [Int]
        var queuedPages = 0
        var epoch: UInt64 = 0
        var finished = 0
        var exited = 0
        var failure: MigrationError?
        var next = 0
        /// Per channel: pages sent as data and as zero.
        var pages: [(normal: UInt64, zero: UInt64)]
    }

    /// Page jobs a channel may have waiting: enough to keep it busy while the
    /// picker works, few enough that a sync is not held up behind many.
    static let queueDepth = 2

    let writers: [StreamWriter]
    let channels: [any ByteChannel]
    let state: Mutex<Queues>
    // NSCondition: the channel threads and the picker wait on it for room, work and the end.
    let condition = NSCondition()

    /// Starts one thread per channel.  `channels[i]` has had its stream header sent through `writers[i]`.
    init(channels: [any ByteChannel], writers: [StreamWriter], mappings: [HostMapping], detection: ZeroPageDetection,
         statistics: RAMCounters, zstdLevel: Int?, zeroCopy: [any ZeroCopyChannel]? = nil) {
        precondition(channels.count == writers.count && !channels.isEmpty)
        self.channels = channels
        self.writers = writers
        state = Mutex(Queues(items: Array(repeating: [], count: channels.count), jobs: Array(repeating: 0, count: channels.count),
                             pages: Array(repeating: (0, 0), count: channels.count)))
        for index in channels.indices {
            let thread = Thread { [self] in
                let compressor: ZstdCompressor?
                do { compressor = try zstdLevel.map { try ZstdCompressor(level: $0) } } catch {
                    fail(.state("zstd: \(error)"))
                    state.withLock { $0.exited += 1 }
                    return
                }
                // Detection on the channel only with `multifd`; `legacy` happened in the picker.
                run(index, PageSender(writer: writers[index], mappings: mappings, detection: detection == .multifd ? .multifd : .none,
                                      statistics: statistics, compressor: compressor, zeroCopy: zeroCopy?[index]))
            }
            thread.name = "ferry-multifd-\(index)"
            thread.start()
        }
    }

    var channelStatistics: [ChannelStatistics] {
        let pages = state.withLock { $0.pages }
        return writers.enumerated().map { index, writer in
            var s = ChannelStatistics(role: .multifd, index: index)
            (s.normalPages, s.zeroPages) = pages[index]
            s.bytes = writer.bytesWritten
            s.frames = writer.framesWritten
            return s
        }
    }

    /// Dirty syncs so far: the epoch the pages queued now belong to.
    var epoch: UInt64 { state.withLock { $0.epoch } }

    /// Pages handed to channels and not yet sent.
    var queuedPages: Int { state.withLock { $0.queuedPages } }

    /// Queues `job` on the channel with the most room, waiting while all are
    /// full; throws the first channel's failure.
    func send(_ job: PageJob) throws(MigrationError) {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let chosen = try state.withLock { q throws(MigrationError) -> Int? in
                if let failure = q.failure { throw failure }
                // Round robin among the channels with the fewest jobs waiting.
                let least = q.jobs.min()!
                guard least < Self.queueDepth else { return nil }
                for step in 0..<q.jobs.count {
                    let i = (q.next + step) % q.jobs.count
                    if q.jobs[i] == least {
                        q.items[i].append(.pages(job))
                        q.jobs[i] += 1
                        q.queuedPages += job.count
                        q.next = (i + 1) % q.jobs.count
                        return i
                    }
                }
                return nil
            }
            if chosen != nil {
                // Counted against the bandwidth limit now, charged when written.
                writers[0].limiter.reserve(job.count * PageSender.pageSize)
                condition.broadcast()
                return
            }
            condition.wait()
        }
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
        condition.lock()
        defer { condition.unlock() }
        while true {
            let done = try state.withLock { q throws(MigrationError) -> Bool in
                if let failure = q.failure { throw failure }
                return q.finished == q.items.count
            }
            if done { return }
            condition.wait()
        }
    }

    /// Stops every channel now (failure or cancel): blocked writes fail, threads end.
    func abort() {
        fail(.cancelled)
    }

    private func enqueueOnAll(_ item: (inout Queues) -> Item) throws(MigrationError) {
        condition.lock()
        defer { condition.unlock() }
        try state.withLock { q throws(MigrationError) in
            if let failure = q.failure { throw failure }
            let next = item(&q)
            for i in q.items.indices { q.items[i].append(next) }
        }
        condition.broadcast()
    }

    private func fail(_ error: MigrationError) {
        let first = state.withLock { q -> Bool in
            guard q.failure == nil else { return false }
            q.failure = error
            return true
        }
        if first { for channel in channels { channel.shutdown() } }
        condition.wakeAll()
    }

    /// The next item for channel `index`, waiting for one; nil once the sender failed.
    private func take(_ index: Int) -> Item? {
        condition.lock()
        defer { condition.unlock() }
        while true {
            let item = state.withLock { q -> Item?? in
                if q.failure != nil { return .some(nil) }
                guard !q.items[index].isEmpty else { return nil }
                return .some(q.items[index].removeFirst())
            }
            if let item { return item }
            condition.wait()
        }
    }

    /// Waits for every channel thread to end (after `finish`, or `abort`), then closes the channels.
    func close() {
        condition.lock()
        while state.withLock({ $0.exited }) < channels.count { condition.wait() }
        condition.unlock()
        for channel in channels { channel.close() }
    }

    private func run(_ index: Int, _ sender: consuming PageSender) {
        defer {
            state.withLock { $0.exited += 1 }
            condition.wakeAll()
        }
        let writer = writers[index]
        while let item = take(index) {
            do throws(MigrationError) {
                switch item {
                case .pages(let job):
                    try sender.send(job)
                    writer.limiter.release(job.count * PageSender.pageSize)
                    let sent = sender.pages
                    state.withLock { q in
                        q.pages[index] = sent
                        q.jobs[index] -= 1
                        q.queuedPages -= job.count
                    }
                case .sync(let epoch):
                    try sender.flushZeroCopy()
                    try writer.send(.sync, payload: SyncMarker.encode(epoch: epoch))
                case .end:
                    try sender.flushZeroCopy()
                    try writer.sendEnd()
                    state.withLock { $0.finished += 1 }
                    condition.wakeAll()
                    return
                }
            } catch {
                fail(error)
                return
            }
            condition.wakeAll()       // room for the picker
        }
    }
}
