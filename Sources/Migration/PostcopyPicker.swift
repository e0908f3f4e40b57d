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
/// - After a request is served, the background goes on from the end of its
///   range (unless it is in the middle of a huge page, which it finishes
///   first): a guest that touched one page is likely to touch the next ones,
///   and they are then already on their way (QEMU's background scan, too,
///   continues from the page it was asked for).
/// - A request for a 4 KiB page that is no longer dirty, with a preempt
///   channel, is sent again there (`resend`): the background took it, and the
///   destination asks only for what it has not placed, so it is still on its
///   way behind the background's queue (its socket buffers and the
///   destination's unread backlog: 1-8 ms at the link's pace, the slowest
///   0.7 % of requests).  The destination takes a requested page's second
///   copy and drops it.  Not a huge page: its 2 MiB would cross the link twice.
struct PostcopyPicker: Sendable {
    enum Channel: Equatable, Sendable { case background, urgent }

    enum RequestPick {
        /// These pages (the request's still dirty ones), on this channel.
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

    init(unitPages: [Int], preempt: Bool) { (self.unitPages, self.preempt) = (unitPages, preempt) }

    /// The pages of a request for `pages` of `block`.
    mutating func request(block: Int, pages: Range<Int>, from selector: inout PageSelector) -> RequestPick {
        if preempt, let interrupted, interrupted.block == block, interrupted.unit == pages.lowerBound / unitPages[block] {
            return .dropped
        }
        let job = selector.take(block: block, pages: pages)
        if interrupted == nil { selector.moveCursor(block: block, page: pages.upperBound) }
        guard job.count > 0 else {
            guard preempt, unitPages[block] == 1 else { return .nothing }
            var again = PageJob()
            for page in pages { again.append(block: block, offset: page * PageSize.base.byteCount, zero: false) }
            return .resend(again)
        }
        return .send(job, on: preempt ? .urgent : .background)
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
