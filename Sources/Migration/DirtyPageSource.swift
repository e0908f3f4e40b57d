import GuestMemory

/// Where the engine learns which guest pages changed: KVM's dirty log (or
/// ring), plus the VMM's own writes, behind one protocol.  The engine speaks in
/// RAM blocks: each bitmap covers one block's pages, indexed by block offset.
public protocol DirtyPageSource: Sendable {
    /// Starts tracking.  The first `collectDirtyPages()` afterwards reports every page.
    func startTracking() throws
    /// The pages written since the previous call, by RAM block name; starts a new interval.
    /// Read a page's contents only after it was collected.
    func collectDirtyPages() throws -> [String: DirtyBitmap]
    func stopTracking() throws
}
