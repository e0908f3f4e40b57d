/// Where a postcopy destination puts pages once its guest runs: RAM the guest
/// may touch at any moment, so every page is placed whole and atomically, and
/// a vCPU that touches a page not yet there waits, reported as a fault, until
/// it is placed.  The engine speaks in RAM blocks and byte offsets; the VMM
/// implements it with userfaultfd (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`).
///
/// Offsets and lengths are whole placement units of their block (`unitBytes`:
/// 4 KiB, or 2 MiB on hugetlb).
public protocol PagePlacement: Sendable {
    /// Bytes per placement unit of each block.
    var unitBytes: [Int] { get }
    /// Whether a unit that arrived all zero, with no access waiting for it, may
    /// be left unplaced (it reads as zero); false when RAM was preallocated,
    /// which must end with every page backed.
    var leavesZeroUnits: Bool { get }
    /// Frees `ranges[block]` (byte ranges, whole units) and registers every
    /// block for missing-page faults (the guest is stopped).
    func prepare(discarding ranges: [[Range<Int>]]) throws(MigrationError)
    /// Accesses waiting on missing units, waiting up to `timeout`; empty when
    /// none came or `interrupt()` was called.
    func waitForFaults(timeout: Duration) throws(MigrationError) -> [MissingPageFault]
    /// Places `bytes[range]` at `offset` of `block` and wakes whoever waits
    /// there; `false` if a page of it was there already (every other unit of
    /// the range is placed all the same).
    func place(_ bytes: [UInt8], range: Range<Int>, block: Int, offset: Int) throws(MigrationError) -> Bool
    /// Places zero pages over `[offset, offset + length)`; `false` if one was
    /// there already (the others placed all the same).
    func placeZero(block: Int, offset: Int, length: Int) throws(MigrationError) -> Bool
    /// Wakes whoever waits on `[offset, offset + length)` (a unit placed meanwhile).
    func wake(block: Int, offset: Int, length: Int) throws(MigrationError)
    /// Makes a `waitForFaults` in another thread return now.
    func interrupt()
    /// Ends the registration: RAM is ordinary memory again (every page has arrived).
    func releaseAll() throws(MigrationError)
}

/// An access waiting on a missing page: the block and the byte offset of its unit.
public struct MissingPageFault: Equatable, Sendable {
    public let block: Int
    public let offset: Int
    /// The faulting thread's TID, when the placement can tell (0: unknown).
    public let thread: Int32
    public init(block: Int, offset: Int, thread: Int32 = 0) { (self.block, self.offset, self.thread) = (block, offset, thread) }
}
