/// Where a background snapshot learns which pages the guest is about to
/// change: every page of RAM write-protected, and each first write to one
/// reported and held until the page is released.  The engine speaks in RAM
/// blocks and byte offsets; the VMM implements it with userfaultfd.
public protocol WriteProtection: Sendable {
    /// Bytes per protection unit of each block (4 KiB, or 2 MiB for hugetlb):
    /// a fault or a release covers a whole unit.
    var unitBytes: [Int] { get }
    /// Write-protects all of RAM (the guest is stopped).
    func protectAll() throws(MigrationError)
    /// Writes held on a protected page, waiting up to `timeout`; empty when
    /// none came or `interrupt()` was called.
    func waitForFaults(timeout: Duration) throws(MigrationError) -> [WriteFault]
    /// Lifts the protection of `[offset, offset + length)` of `block` and lets
    /// the writes held there go ahead.
    func release(block: Int, offset: Int, length: Int) throws(MigrationError)
    /// Makes a `waitForFaults` in another thread return now.
    func interrupt()
    /// Lifts every protection and lets every held write go ahead (after any outcome).
    func releaseAll() throws(MigrationError)
}

/// One write held on a protected page: the block, and the offset of its protection unit.
public struct WriteFault: Equatable, Sendable {
    public let block: Int
    public let offset: Int
    public init(block: Int, offset: Int) { (self.block, self.offset) = (block, offset) }
}
