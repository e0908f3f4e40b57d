import GuestMemory

/// Where the engine learns which guest pages changed: KVM's dirty log (or
/// ring), plus the VMM's own writes, behind one protocol.  The engine speaks in
/// RAM blocks: each bitmap covers one block's pages, indexed by block offset.
public protocol DirtyPageSource: Sendable {
    /// Starts tracking.  The first `collectDirtyPages()` afterwards reports every
    /// page, and may leave re-arming the tracking of each to `prepareToRead`.
    func startTracking() throws
    /// The pages written since the previous call, by RAM block name; starts a new interval.
    /// Read a page's contents only after it was collected.
    func collectDirtyPages() throws -> [String: DirtyBitmap]
    /// The pages written since the previous collection, for the last look with
    /// the guest stopped: the interval need not end, so a source may skip
    /// re-arming its tracking (KVM: the clear that write-protects the pages
    /// again), and a later collection then reports them again.
    func peekDirtyPages() throws -> [String: DirtyBitmap]
    /// Called before reading `pages` of block `block`: a source whose last
    /// collection left re-arming its tracking for later (KVM: the first one,
    /// which reports every page) re-arms it for them now, so that any write after
    /// this call is reported by the next collection.  Calling it early, or for
    /// pages it does not cover, is harmless.  A page never prepared is not
    /// reported again by a later collection: its first report stands, so the
    /// caller must keep it pending until it prepares and reads it (a caller that
    /// may drop pages unread, as free page hints do, prepares them all first).
    func prepareToRead(block: String, pages: Range<Int>) throws
    func stopTracking() throws
}

extension DirtyPageSource {
    /// A source that cannot look without ending the interval collects.
    public func peekDirtyPages() throws -> [String: DirtyBitmap] { try collectDirtyPages() }

    /// A source that re-arms its tracking at each collection has nothing to do here.
    public func prepareToRead(block: String, pages: Range<Int>) throws {}
}
