import GuestMemory

/// A postcopy destination's account of the pages still to come: the discard
/// set as it arrived, less each page as it is placed, and the units asked for.
/// Pure: no I/O; its owner holds a lock while it asks, never while it places.
///
/// A missing unit the guest touches is asked for once.  A missing unit with no
/// page to come is zero on the source (it was never sent: a page that started
/// zero and was never written), so it is filled with zeroes here.
struct PostcopyPageMap: Sendable {
    /// Per block: 4 KiB pages the source will still send.
    private(set) var needed: [DirtyBitmap]
    private(set) var neededCount: Int
    /// Per block: pages per placement unit (1, or 512 on hugetlb).
    let unitPages: [Int]
    /// Per block: units asked for and not yet complete, with when they were asked.
    private var requested: [[Int: ContinuousClock.Instant]]
    /// Per block of 4 KiB units: pages asked for and placed whose second copy
    /// may still come (the source sends a requested page again when the
    /// background already had it on its way: `PostcopyPicker`).  One each.
    private var secondCopyDue: [DirtyBitmap]

    enum FaultAction: Equatable {
        /// Ask the source for this unit (bytes).
        case request(offset: Int, length: Int)
        /// Asked already: its placement will wake the access.
        case waiting
        /// Nothing is to come here: the unit is zero (or was placed meanwhile).
        case absent(offset: Int, length: Int)
    }

    /// With capability `postcopy-blocktime`: who waited, and how long (kept with
    /// the map, so a fault and the placement that ends it are seen in order).
    private(set) var blocktime: PostcopyBlocktime?

    init(discard: [DirtyBitmap], unitPages: [Int], blocktimeVCPUs: Int? = nil) {
        precondition(discard.count == unitPages.count)
        needed = discard
        neededCount = discard.reduce(0) { $0 + $1.count }
        self.unitPages = unitPages
        requested = Array(repeating: [:], count: discard.count)
        secondCopyDue = zip(discard, unitPages).map { DirtyBitmap(pageCount: $1 == 1 ? $0.pageCount : 0) }
        blocktime = blocktimeVCPUs.map { PostcopyBlocktime(vcpuCount: $0) }
    }

    var isComplete: Bool { neededCount == 0 }

    /// What to do about an access waiting at byte `offset` of `block`, by
    /// `vcpu` (nil: another thread, or not known).
    mutating func fault(block: Int, offset: Int, vcpu: Int? = nil, at now: ContinuousClock.Instant) -> FaultAction {
        let unitBytes = unitPages[block] * PageSize.base.byteCount
        let unit = offset / unitBytes
        let first = unit * unitPages[block]
        guard let next = needed[block].nextSetPage(from: first), next < first + unitPages[block] else {
            return .absent(offset: unit * unitBytes, length: unitBytes)
        }
        blocktime?.fault(block: block, unit: unit, vcpu: vcpu, at: now)
        guard requested[block][unit] == nil else { return .waiting }
        requested[block][unit] = now
        return .request(offset: unit * unitBytes, length: unitBytes)
    }

    /// Whether page `page` of `block` is still to come (a page that is not must
    /// not arrive, but as a requested page's second copy: `takeSecondCopy`).
    func isNeeded(block: Int, page: Int) -> Bool { needed[block][page] }

    /// Whether page `page` of `block`, here already, may arrive this once more:
    /// it was asked for, and this is its first second copy (to be dropped).
    mutating func takeSecondCopy(block: Int, page: Int) -> Bool {
        guard page < secondCopyDue[block].pageCount, secondCopyDue[block][page] else { return false }
        secondCopyDue[block][page] = false
        return true
    }

    /// Pages `pages` of `block` are placed.  For each unit that completes and
    /// was asked for, how long it took.
    mutating func placed(block: Int, pages: Range<Int>, at now: ContinuousClock.Instant) -> [Duration] {
        for page in pages where needed[block][page] {
            needed[block][page] = false
            neededCount -= 1
        }
        var latencies: [Duration] = []
        let unitPages = self.unitPages[block]
        for unit in pages.lowerBound / unitPages...(pages.upperBound - 1) / unitPages {
            guard let asked = requested[block][unit] else { continue }
            let first = unit * unitPages
            if let next = needed[block].nextSetPage(from: first), next < first + unitPages { continue }
            requested[block][unit] = nil
            if unitPages == 1 { secondCopyDue[block][unit] = true }
            blocktime?.placed(block: block, unit: unit, at: now)
            latencies.append(now - asked)
        }
        return latencies
    }

    /// Unit `unit` of `block` arrived all zero: unless it was asked for, it is
    /// counted as here without being placed (true), and its memory, freed at the
    /// switch or never used, reads as zero; an access to it then finds nothing
    /// to come (`absent`) and fills it.  False when it was asked for: the caller
    /// places it, which wakes the access.
    mutating func leaveZero(block: Int, unit: Int) -> Bool {
        guard requested[block][unit] == nil else { return false }
        let first = unit * unitPages[block]
        for page in first..<first + unitPages[block] where needed[block][page] {
            needed[block][page] = false
            neededCount -= 1
        }
        return true
    }

    /// The units asked for and not yet placed, oldest first: after a recovery
    /// they are asked for again (the requests may have been lost with the connection).
    var outstandingRequests: [(block: Int, offset: Int, length: Int)] {
        var all: [(block: Int, offset: Int, length: Int, asked: ContinuousClock.Instant)] = []
        for (block, units) in requested.enumerated() {
            let unitBytes = unitPages[block] * PageSize.base.byteCount
            for (unit, asked) in units { all.append((block, unit * unitBytes, unitBytes, asked)) }
        }
        return all.sorted { $0.asked < $1.asked }.map { ($0.block, $0.offset, $0.length) }
    }

    /// Per block, the pages that are here (QEMU's received bitmap): every page
    /// but those still to come.  Bit `i` of word `i / 64` is page `i`; no bit past the block's end.
    var receivedWords: [[UInt64]] {
        needed.map { DirtyBitmap(words: $0.words.map { ~$0 }, pageCount: $0.pageCount).words }
    }

    /// The first page still to come, if any (for the error when the stream ends without it).
    var firstNeeded: (block: Int, page: Int)? {
        for (block, bitmap) in needed.enumerated() { if let page = bitmap.nextSetPage(from: 0) { return (block, page) } }
        return nil
    }
}
