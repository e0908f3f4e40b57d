import GuestMemory

/// Which protection units of RAM a background snapshot has saved, is saving,
/// or has still to save, and where the linear scan stands.  Pure: no I/O, no
/// lock of its own (the owner holds one while it claims, never during I/O).
///
/// A unit is claimed exactly once, by a write fault or by the scan, and the
/// claimer saves it: the fault handler from a copy taken before the release,
/// the scan from RAM still protected, releasing it after the write.  So every
/// unit is saved once, as it was when the snapshot started.
struct SnapshotPageMap: Sendable {
    enum Claim: Equatable {
        /// Claimed now: the caller saves the unit.
        case claimed
        /// Claimed by the scan, which has not released it yet: its release wakes the writer.
        case inFlight
        /// Saved and released already (a fault reported before the release).
        case done
    }

    /// Per block: units not claimed yet (set), and units done (set).
    private(set) var unclaimed: [DirtyBitmap]
    private(set) var done: [DirtyBitmap]
    let unitBytes: [Int]
    private(set) var cursor = (block: 0, unit: 0)
    private(set) var unclaimedCount: Int
    private(set) var doneCount = 0
    let unitCount: Int

    init(blockBytes: [Int], unitBytes: [Int]) {
        precondition(blockBytes.count == unitBytes.count)
        self.unitBytes = unitBytes
        let counts = zip(blockBytes, unitBytes).map { bytes, unit in
            precondition(unit > 0 && bytes % unit == 0)
            return bytes / unit
        }
        unclaimed = counts.map { DirtyBitmap(pageCount: $0, allSet: true) }
        done = counts.map { DirtyBitmap(pageCount: $0) }
        unitCount = counts.reduce(0, +)
        unclaimedCount = unitCount
        unclaimedBytes = blockBytes.reduce(0, +)
    }

    var isComplete: Bool { doneCount == unitCount }

    /// Bytes of RAM not claimed yet.
    private(set) var unclaimedBytes = 0

    /// A write fault on the unit holding `offset` of `block`.
    mutating func claimFault(block: Int, offset: Int) -> Claim {
        let unit = offset / unitBytes[block]
        if unclaimed[block][unit] {
            unclaimed[block][unit] = false
            unclaimedCount -= 1
            unclaimedBytes -= unitBytes[block]
            return .claimed
        }
        return done[block][unit] ? .done : .inFlight
    }

    /// The scan takes the next unclaimed units from its cursor on, as long as
    /// they are consecutive in one block, until `maxBytes`: (block, first unit, count).
    mutating func claimScan(maxBytes: Int) -> (block: Int, unit: Int, count: Int)? {
        guard unclaimedCount > 0 else { return nil }
        while true {
            guard let first = unclaimed[cursor.block].nextSetPage(from: cursor.unit) else {
                cursor = ((cursor.block + 1) % unclaimed.count, 0)
                continue
            }
            let block = cursor.block
            let limit = max(1, maxBytes / unitBytes[block])
            var count = 0
            while count < limit, first + count < unclaimed[block].pageCount, unclaimed[block][first + count] {
                unclaimed[block][first + count] = false
                count += 1
            }
            unclaimedCount -= count
            unclaimedBytes -= count * unitBytes[block]
            cursor.unit = first + count
            return (block, first, count)
        }
    }

    /// Units saved and released.
    mutating func finish(block: Int, unit: Int, count: Int = 1) {
        for u in unit..<unit + count {
            precondition(!unclaimed[block][u] && !done[block][u], "a unit finished twice or never claimed")
            done[block][u] = true
        }
        doneCount += count
    }
}
