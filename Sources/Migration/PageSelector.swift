import GuestMemory

/// Which pages go out next, on the source: the dirty bitmap of every RAM
/// block, its exact count, and the cursor of the pass through them.  Pure: no
/// I/O, no lock of its own (the owner holds one while it picks, never while a
/// channel writes).
///
/// A page is cleared the moment it is picked, and a sync adds only pages not
/// already pending, so `dirtyCount` is exact and, between two syncs, a page is
/// picked at most once (the multifd sync barrier relies on it).
struct PageSelector: Sendable {
    var bitmaps: [DirtyBitmap]
    private(set) var dirtyCount = 0
    private(set) var cursor = (block: 0, page: 0)
    /// The chunks resident (in RAM or swap) when tracking started, and every chunk
    /// the guest has written since (each sync adds the chunks of the pages it
    /// collected): a page in a chunk outside it is still zero (any write to it
    /// would be in the dirty log), so it is picked as zero without being read.
    var resident: [DirtyBitmap]?
    let chunkPages: Int

    init(pageCounts: [Int], chunkPages: Int) {
        bitmaps = pageCounts.map { DirtyBitmap(pageCount: $0) }
        self.chunkPages = chunkPages
    }

    /// Adds a dirty-log collection (one bitmap per block, nil for none);
    /// returns how many pages the guest dirtied (counted whether or not already pending).
    mutating func merge(_ collected: [DirtyBitmap?]) -> Int {
        precondition(collected.count == bitmaps.count)
        var dirtied = 0
        for (index, bitmap) in collected.enumerated() {
            guard let bitmap else { continue }
            dirtied += bitmap.count
            dirtyCount += bitmaps[index].merge(bitmap)
            // Pages written since tracking started may sit in chunks that were not
            // resident: those chunks hold data now.  The others are still empty (a
            // sync in the middle of the first pass, as a save's threshold makes, no
            // longer has the rest of it read page by page through the zero page).
            if resident != nil { Self.markChunks(of: bitmap, in: &resident![index], chunkPages: chunkPages) }
        }
        return dirtied
    }

    /// Sets in `chunks` every chunk (of `chunkPages` pages) that holds a page set in `pages`.
    static func markChunks(of pages: DirtyBitmap, in chunks: inout DirtyBitmap, chunkPages: Int) {
        var from = 0
        while from < pages.pageCount, let page = pages.nextSetPage(from: from) {
            let chunk = page / chunkPages
            chunks[chunk] = true
            from = (chunk + 1) * chunkPages
        }
    }

    /// Takes up to `count` dirty pages from the cursor on, wrapping to the next
    /// block (and round) when one has no more; marks a page zero if its chunk
    /// held no memory or `isZero(block, page)` says so.  Nil when none is dirty.
    mutating func next(_ count: Int, isZero: (Int, Int) -> Bool = { _, _ in false }) -> PageJob? {
        guard dirtyCount > 0 else { return nil }
        var job = PageJob()
        job.blocks.reserveCapacity(count)
        job.offsets.reserveCapacity(count)
        job.knownZero.reserveCapacity(count)
        while dirtyCount > 0 && job.count < count {
            guard let page = bitmaps[cursor.block].nextSetPage(from: cursor.page) else {
                cursor = ((cursor.block + 1) % bitmaps.count, 0)
                continue
            }
            let block = cursor.block
            bitmaps[block][page] = false
            dirtyCount -= 1
            cursor.page = page + 1
            let chunkWasResident = resident?[block][page / chunkPages] ?? true
            job.append(block: block, offset: page * PageSize.base.byteCount, zero: !chunkWasResident || isZero(block, page))
        }
        return job
    }

    /// Clears the dirty pages among `pages` of `block` (a free page hint);
    /// returns how many were dirty.  Pages outside the block are ignored.
    mutating func clear(block: Int, pages: Range<Int>) -> Int {
        let upper = min(pages.upperBound, bitmaps[block].pageCount)
        var page = max(pages.lowerBound, 0), cleared = 0
        while page < upper, let next = bitmaps[block].nextSetPage(from: page), next < upper {
            bitmaps[block][next] = false
            cleared += 1
            page = next + 1
        }
        dirtyCount -= cleared
        return cleared
    }

    // MARK: postcopy

    /// Takes the dirty pages among `pages` of `block` (a page request), in
    /// order; the cursor stays where it was.  Empty when none is dirty (sent already).
    mutating func take(block: Int, pages: Range<Int>) -> PageJob {
        var job = PageJob()
        var page = pages.lowerBound
        while page < pages.upperBound, let next = bitmaps[block].nextSetPage(from: page), next < pages.upperBound {
            bitmaps[block][next] = false
            dirtyCount -= 1
            // A chunk never resident is zero: not read (as `next` picks it).
            job.append(block: block, offset: next * PageSize.base.byteCount, zero: !(resident?[block][next / chunkPages] ?? true))
            page = next + 1
        }
        return job
    }

    /// Moves the cursor to `page` of `block`: the next background pick starts there.
    mutating func moveCursor(block: Int, page: Int) {
        precondition(block < bitmaps.count && page <= bitmaps[block].pageCount)
        cursor = (block, page)
    }

    /// Postcopy recovery: exactly `pages` are dirty from now on (what the
    /// destination still lacks), and the pass starts again from the first.
    /// What is known resident stays known: the guest has not run here since the switch.
    mutating func replace(with pages: [DirtyBitmap]) {
        precondition(pages.map(\.pageCount) == bitmaps.map(\.pageCount))
        bitmaps = pages
        dirtyCount = pages.reduce(0) { $0 + $1.count }
        cursor = (0, 0)
    }

    /// Marks dirty every page of each unit of `unitPages[block]` pages that has
    /// one dirty page (a huge page is placed whole, so it is sent whole), and
    /// moves the cursor back to the start of its unit.  Left inside one (a pass
    /// with jobs of 256 pages stops in the middle of a 512-page huge page), the
    /// pass would send only the unit's upper part first, and a request for the
    /// rest would send it on another channel: a huge page split in two, which
    /// the destination refuses.
    mutating func widen(unitPages: [Int]) {
        if cursor.block < unitPages.count, unitPages[cursor.block] > 1 {
            cursor.page = cursor.page / unitPages[cursor.block] * unitPages[cursor.block]
        }
        for (block, unit) in unitPages.enumerated() where unit > 1 {
            var page = 0
            while let next = bitmaps[block].nextSetPage(from: page) {
                let first = next / unit * unit
                for p in first..<min(first + unit, bitmaps[block].pageCount) where !bitmaps[block][p] {
                    bitmaps[block][p] = true
                    dirtyCount += 1
                }
                page = first + unit
            }
        }
    }
}
