import GuestMemory

/// What postcopy sends next, and on which channel: Ferry's reading of the
/// seed's preempt rules (Peter Xu, "migration: Postcopy preemption
/// enablement", 2022).  Pure: it edits the caller's `PageSelector` and does no I/O.
///
/// - Background pages come from the selector's cursor, a few at a time; the
///   points between two background batches are where a request may interrupt.
/// - With a preempt channel, a request's pages go there (`urgent`); without,
///   on the one channel.
/// - A huge page the background has started and not finished is
///   `interrupted`: the background resumes it where it stopped, and a request
///   that falls inside it is dropped (the background finishes it), so with a
///   preempt channel a huge page never travels on two channels.
/// - After a request for a huge page, or any request without a preempt
///   channel, the background goes on from the end of its range (unless it is
///   in the middle of a huge page, which it finishes first): a guest that
///   touched one page is likely to touch the next ones, and they are then
///   already on their way (without a preempt channel, QEMU's background scan
///   too continues from the page it was asked for).
/// - With a preempt channel and 4 KiB pages, a request that continues a run
///   (the page before it went on the preempt channel lately: `recentRuns`)
///   takes the `readAhead` pages after it along (those still dirty), and the
///   background goes on after them (after the page alone when it was sent
///   already and goes again); a request on its own moves nothing.  The background behind
///   a jump is milliseconds from the destination (its socket's unsent bytes
///   and the bottleneck's queue), and a guest reading on from the page it
///   asked for overtook it: 1.6-4.8 thousand pages a run were asked for again
///   while the background's copy was under way.  And a guest that reads
///   here and there (the bench guest reads a random page after each one it
///   writes) sent the background off wherever it read last.
/// - A request for a 4 KiB page that is no longer dirty, with a preempt
///   channel, is sent again there (`resend`): the background took it, and the
///   destination asks only for what it has not placed, so it is still on its
///   way behind the background's queue (its socket buffers and the
///   destination's unread backlog: 1-8 ms at the link's pace, the slowest
///   0.7 % of requests).  The destination takes a requested page's second
///   copy and drops it.  Not a huge page: its 2 MiB would cross the link
///   twice.  Nor a page that went on the preempt channel lately: its copy
///   there is ahead of any second one (`nothing`).
struct PostcopyPicker: Sendable {
    enum Channel: Equatable, Sendable { case background, urgent }

    enum RequestPick {
        /// These pages (the request's still dirty ones, and any taken along with it), on this channel.
        case send(PageJob, on: Channel)
        /// Inside the interrupted huge page: the background sends it.
        case dropped
        /// Nothing of it is dirty: sent already.
        case nothing
        /// Nothing of it is dirty, and it is a 4 KiB page with a preempt channel:
        /// sent again there, ahead of the background's copy.
        case resend(PageJob)
    }

    /// Pages per placement unit of each block (1, or 512 on hugetlb).
    let unitPages: [Int]
    /// Whether a preempt channel carries requests.
    let preempt: Bool
    /// The huge page the background is in the middle of.
    private(set) var interrupted: (block: Int, unit: Int)?
    /// The latest runs of 4 KiB pages sent on the preempt channel, oldest first
    /// (at most `recentRuns`; only with a preempt channel).
    private var recentUrgent: [(block: Int, pages: Range<Int>)] = []

    /// 4 KiB pages after a requested one that go with it when it continues a run.
    /// 15 and 31 both took the pages asked for again from 1.6-4.8 thousand a run
    /// to 75-174, request p99 unchanged (2 runs each, alternating); 15 puts less
    /// in front of the next request.
    static let readAhead = 15
    /// How many runs sent on the preempt channel are remembered (a count, not a
    /// time: at the bench's 3000 requests a second, about the last 5 ms, while
    /// their pages may still be on their way).  A page forgotten too soon is
    /// only sent again, as any the background took.
    static let recentRuns = 16

    init(unitPages: [Int], preempt: Bool) { (self.unitPages, self.preempt) = (unitPages, preempt) }

    /// The pages of a request for `pages` of `block`.
    mutating func request(block: Int, pages: Range<Int>, from selector: inout PageSelector) -> RequestPick {
        if preempt, let interrupted, interrupted.block == block, interrupted.unit == pages.lowerBound / unitPages[block] {
            return .dropped
        }
        if preempt, unitPages[block] == 1 { return requestBasePages(block: block, pages: pages, from: &selector) }
        let job = selector.take(block: block, pages: pages)
        if interrupted == nil { selector.moveCursor(block: block, page: pages.upperBound) }
        guard job.count > 0 else { return .nothing }
        return .send(job, on: preempt ? .urgent : .background)
    }

    /// A request for 4 KiB pages with a preempt channel (the rules above).
    private mutating func requestBasePages(block: Int, pages: Range<Int>, from selector: inout PageSelector) -> RequestPick {
        let first = pages.lowerBound
        let dirty = selector.bitmaps[block][first]
        if !dirty, sentUrgently(block: block, page: first) { return .nothing }
        let continuing = first > 0 && sentUrgently(block: block, page: first - 1)
        let range = continuing && dirty ? first..<min(pages.upperBound + Self.readAhead, selector.bitmaps[block].pageCount) : pages
        let job = selector.take(block: block, pages: range)
        if continuing, interrupted == nil { selector.moveCursor(block: block, page: range.upperBound) }
        guard job.count > 0 else {
            var again = PageJob()
            for page in pages { again.append(block: block, offset: page * PageSize.base.byteCount, zero: false) }
            remember(again)
            return .resend(again)
        }
        remember(job)
        return .send(job, on: .urgent)
    }

    /// Whether page `page` of `block` went on the preempt channel lately.
    private func sentUrgently(block: Int, page: Int) -> Bool {
        recentUrgent.contains { $0.block == block && $0.pages.contains(page) }
    }

    /// Keeps the runs of consecutive pages `job` sends on the preempt channel.
    private mutating func remember(_ job: PageJob) {
        for i in 0..<job.count {
            let page = job.offsets[i] / PageSize.base.byteCount
            if let last = recentUrgent.last, last.block == job.blocks[i], last.pages.upperBound == page {
                recentUrgent[recentUrgent.count - 1].pages = last.pages.lowerBound..<page + 1
            } else {
                recentUrgent.append((job.blocks[i], page..<page + 1))
            }
        }
        if recentUrgent.count > Self.recentRuns { recentUrgent.removeFirst(recentUrgent.count - Self.recentRuns) }
    }

    /// The next background batch of at most `count` pages, from the cursor; nil when none is dirty.
    mutating func background(_ count: Int, from selector: inout PageSelector) -> PageJob? {
        guard let job = selector.next(count), let block = job.blocks.last, let offset = job.offsets.last else {
            interrupted = nil
            return nil
        }
        let unit = unitPages[block]
        let page = offset / PageSize.base.byteCount
        let first = page / unit * unit
        let unfinished = unit > 1 && selector.bitmaps[block].nextSetPage(from: page + 1).map { $0 < first + unit } == true
        interrupted = unfinished ? (block, page / unit) : nil
        return job
    }
}
