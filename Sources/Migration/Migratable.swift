import MigrationProtocol

/// One piece of migratable state: QEMU's `SaveVMHandlers`, in Swift.
///
/// RAM iterates while the guest runs; devices and vCPUs only save at
/// completion.  Sizes are asked two ways: `pendingEstimate` is cheap and may be
/// asked often with the guest running; `pendingExact` may cost real work
/// (RAM syncs the dirty log; a device might have to stop) and is asked only
/// when the estimate says switchover is near.
public protocol Migratable: AnyObject, Sendable {
    /// The section name, unique in a stream ("cpu/0", "platform", "serial").
    var sectionName: String { get }
    var sectionVersion: UInt16 { get }
    /// Source, once, before the first iteration.
    func setup() throws(MigrationError)
    /// Bytes still to send, without stopping anything.
    func pendingEstimate() -> UInt64
    /// Bytes still to send, exactly.
    func pendingExact() throws(MigrationError) -> UInt64
    /// Source, guest running: sends some of what is pending.  Returns `true`
    /// when nothing is left to send for now.
    func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool
    /// Source, guest stopped: everything that is left.
    func complete(_ output: StreamWriter) throws(MigrationError)
    /// Destination: loads this object's section.
    func load(_ section: StateSection) throws(MigrationError)
    /// Source, after success or failure: releases what `setup` took.  A failure
    /// (say, dirty tracking that will not stop) is reported with the migration.
    func cleanup() throws(MigrationError)
}

/// State saved whole at switchover (vCPUs, devices): implement `save` and `load`.
public protocol MigratableDevice: Migratable {
    /// The state, with the guest stopped.
    func save() throws(MigrationError) -> [UInt8]
    /// A cheap upper bound of `save()`'s size.
    var estimatedSize: UInt64 { get }
}

extension MigratableDevice {
    public func setup() throws(MigrationError) {}
    public func pendingEstimate() -> UInt64 { estimatedSize }
    public func pendingExact() throws(MigrationError) -> UInt64 { estimatedSize }
    public func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool { true }
    public func complete(_ output: StreamWriter) throws(MigrationError) {
        let section = StateSection(name: sectionName, version: sectionVersion, state: try save())
        try output.send(.section, payload: section.encode())
    }
    public func cleanup() {}
}
