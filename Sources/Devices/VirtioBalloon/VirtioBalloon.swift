import GuestMemory

/// A virtio-balloon on a virtio-mmio transport: what `--device
/// virtio-balloon[,free-page-hint=on]` adds to a machine.  The host side:
/// QMP's `balloon` target, `query-balloon`'s figure, and a migration's free
/// page hint commands.
public final class VirtioBalloon: Sendable {
    public let transport: VirtioMMIOTransport<BalloonBackend>
    /// Whether the device offers free page hints (`free-page-hint=on`).  Kept
    /// here, not read from the backend: that takes the device's lock, which an
    /// inflating vCPU holds while it asks the machine's migration state.
    public let freePageHint: Bool

    public init(memory: GuestMemoryMap, freePageHint: Bool, host: BalloonHost,
                setInterruptLine: @escaping @Sendable (Bool) -> Void,
                onBroken: @escaping @Sendable (VirtqueueError) -> Void = { _ in }) {
        self.freePageHint = freePageHint
        transport = VirtioMMIOTransport(BalloonBackend(ramBytes: memory.totalBytes, freePageHint: freePageHint, host: host),
                                        memory: memory, setInterruptLine: setInterruptLine, onBroken: onBroken)
    }

    /// Whether the driver is up (DRIVER_OK) and the device not broken: QMP's `balloon` needs it.
    public var isActive: Bool { transport.status.contains(.driverOK) && transport.brokenReason == nil }
    /// The guest's memory now: RAM minus what the balloon holds (`query-balloon`'s `actual`).
    public var actualBytes: UInt64 { transport.backend.actualBytes }
    public var counters: BalloonCounters { transport.backend.counters }
    public var hinting: FreePageHinting { transport.backend.hinting }

    /// QMP `balloon`: the guest should have `bytes` of memory (at most all of RAM,
    /// rounded down to 4 KiB pages); the driver inflates or deflates to reach it.
    public func setTarget(bytes: UInt64) {
        transport.withBackend { backend, context in
            let ram = backend.ramBytes
            let pages = UInt32(clamping: (ram - min(bytes, ram)) >> BalloonBackend.pfnShift)
            guard pages != backend.targetPages else { return }
            backend.targetPages = pages
            context.changeConfig()
        }
    }

    // MARK: free page hints, for a migration

    /// A sync numbered `epoch` just happened, guest running: asks the driver for
    /// a new round of hints, which go to `target`.  False if the driver did not
    /// negotiate FREE_PAGE_HINT.
    @discardableResult
    public func startHinting(epoch: UInt64, target: @escaping FreePageHintTarget) -> Bool {
        transport.withBackend { backend, context in
            let changed = backend.startHinting(epoch: epoch, target: target)
            if changed { context.changeConfig() }
            return changed
        }
    }

    /// A sync is about to happen: no hint applies until the next `startHinting`.
    public func stopHinting() {
        transport.withBackend { backend, context in if backend.stopHinting() { context.changeConfig() } }
    }

    /// The guest stopped for the switchover, or the migration ended: DONE, and the
    /// driver may use what it reported again.
    public func finishHinting() {
        transport.withBackend { backend, context in if backend.finishHinting() { context.changeConfig() } }
    }

    // MARK: migration of the device itself

    public func saveState() -> [UInt8] { transport.saveState() }
    public func loadState(_ bytes: [UInt8]) throws(DeviceStateError) { try transport.loadState(bytes, what: "virtio-balloon") }
}
