import Devices
import EmbeddedGuest
import Foundation
import GuestMemory
import HostThreads
import KVM
import QMP
import Synchronization
import Transport

/// A running virtual machine: KVM objects, guest RAM, devices and vCPU threads.
///
/// The composition root: the only type that sees kernel objects, devices and
/// the control plane together.  Its run state changes only through `pause()`,
/// `resume()`, `quit()` and guest exits, each emitting QEMU's event.
public final class Machine: Sendable {
    public let configuration: MachineConfiguration
    public let memory: GuestMemoryMap
    public let serial: Serial16550
    /// Where the vCPUs' port and MMIO exits go.
    let bus: DeviceBus
    /// The virtio-balloon `--device virtio-balloon` added, if any.
    public let balloon: VirtioBalloon?
    let vm: VirtualMachine
    let vcpus: [VirtualCPU]
    let memorySlots: [MemorySlotMapping]
    let control: RunControl
    let tracker: GuestProgressTracker
    let runState = Mutex<RunState>(.paused)
    let eventSink: @Sendable (QMPEvent) -> Void
    /// live → quitting → finished: `quit()` runs once, and waiters wake only after SHUTDOWN went out.
    enum Lifecycle { case live, quitting, finished }
    let lifecycle = Mutex<Lifecycle>(.live)
    /// Guest TSC frequency, as KVM reports it for vCPU 0.
    public let tscKHz: UInt32
    /// Migration settings and the current outgoing or incoming migration.
    let migration = MigrationSlot()
    /// Descriptors QMP clients passed and named (`getfd`, `add-fd`); `fd:NAME` and `/dev/fdset/N` use them.
    public let descriptors = DescriptorRegistry()
    /// The run state a switchover stopped, so a failed one can go back to it.
    let switchoverPreviousState = Mutex<RunState?>(nil)
    /// Held while a run-state change parks the vCPUs (`stop`, a switchover, a
    /// guest that stopped itself), so "paused" is never seen before the park is done.
    let stopping = Mutex(())
    let incomingFailureStorage = Mutex<String?>(nil)
    /// Where a device's failed kernel call goes: the guest stops with the reason.
    let deviceFaults: DeviceFaults
    /// False after `start(paused: true)` (`-S`): nothing runs until `cont`, not even after an incoming migration.
    let autostartStorage = Mutex(true)
    var autostart: Bool { autostartStorage.withLock { $0 } }

    /// Whether this machine waits for its state from a migration instead of booting.
    public let isIncoming: Bool

    /// Builds the machine and loads its kernel; the vCPUs start with `start()`.
    /// An `incoming` machine loads nothing: its memory and vCPU state come
    /// from a migration stream, and it runs once that is loaded.
    public init(_ configuration: MachineConfiguration, incoming: Bool = false,
                serialOutput: @escaping @Sendable ([UInt8]) -> Void,
                events: @escaping @Sendable (QMPEvent) -> Void = { _ in }) throws(MachineError) {
        try configuration.validate()
        self.configuration = configuration
        self.eventSink = events
        self.isIncoming = incoming
        if incoming { runState.withLock { $0 = .inmigrate } }
        do {
            let system = try KVMSystem()
            vm = try system.makeVirtualMachine()
            try vm.createPlatform()
            try vm.enableManualDirtyLogProtection()
        } catch { throw .kvm(error) }
        do { memory = try GuestMemoryMap.pc(byteCount: configuration.memoryBytes, backend: configuration.backend) }
        catch { throw .memory(error) }
        // Transparent huge pages, as QEMU advises its guest RAM: a guest's first touch of its
        // memory, and a destination filling all of it at once, cost one fault per 2 MiB instead
        // of per 4 KiB (here a guest writing its first 1.5 GiB took 29-38 s without them, 1.9-12 with).
        for block in memory.blocks { block.mapping.adviseHugePages() }
        if configuration.preallocate {
            do { for block in memory.blocks { try block.mapping.prefault() } } catch { throw .memory(error) }
        }
        let vm = self.vm
        let faults = DeviceFaults()
        self.deviceFaults = faults
        serial = Serial16550(output: serialOutput, setInterruptLine: { level in
            do { try vm.setIRQLine(Serial16550.com1IRQ, level: level) } catch {
                faults.report("cannot set IRQ \(Serial16550.com1IRQ) of the UART: \(error)")
            }
        })
        let abiPorts = GuestABIPorts()
        let balloonHost = BalloonHostBridge()
        var bus = DeviceBus()
        var balloon: VirtioBalloon?
        do {
            try bus.attach(serial, ports: serial.ports)
            try bus.attach(abiPorts, ports: GuestABI.heartbeatPort...GuestABI.panicPort)
            for (slot, device) in configuration.devices.enumerated() {
                let irq = VirtioMMIOLayout.irq(slot: slot)
                switch device {
                case .virtioBalloon(let freePageHint):
                    let made = VirtioBalloon(
                        memory: memory, freePageHint: freePageHint,
                        host: BalloonHost(discard: { range in balloonHost.discard(range) },
                                          actualChanged: { bytes in balloonHost.actualChanged(bytes) }),
                        setInterruptLine: { level in
                            do { try vm.setIRQLine(irq, level: level) } catch {
                                faults.report("cannot set IRQ \(irq) of the virtio-balloon: \(error)")
                            }
                        },
                        onBroken: { reason in
                            FileHandle.standardError.write(Data("ferry: virtio-balloon needs a reset: \(reason)\n".utf8))
                        })
                    try bus.attach(made.transport, base: VirtioMMIOLayout.address(slot: slot), size: VirtioMMIOLayout.windowSize)
                    balloon = made
                }
            }
        } catch { throw .invalidState("device layout: \(error)") }
        self.bus = bus
        self.balloon = balloon
        control = RunControl(vcpuCount: configuration.cpus)
        tracker = GuestProgressTracker(cpuCount: configuration.cpus)
        (vcpus, tscKHz, memorySlots) = try Self.boot(configuration, vm: vm, memory: memory, loadKernel: !incoming)
        faults.attach(self)
        abiPorts.attach(self)
        balloonHost.attach(self)
    }

    /// Starts one thread per vCPU and runs the guest.  An incoming machine's
    /// vCPU threads wait parked until the migration has loaded its state.
    public func start(paused: Bool = false) {
        autostartStorage.withLock { $0 = !paused }
        for vcpu in vcpus {
            HostThread.start("CPU \(vcpu.index.rawValue)/KVM", stackSize: 1 << 20) { [self] in VCPURunLoop(machine: self, vcpu: vcpu).run() }
        }
        if isIncoming { return }
        if paused {
            runState.withLock { $0 = .prelaunch }
            return
        }
        runState.withLock { $0 = .running }
        control.resume()
    }

    public var state: RunState { runState.withLock { $0 } }
    public var progress: GuestProgress { tracker.snapshot }

    /// Freezes every vCPU (QMP `stop`).  Emits STOP if the guest was running.
    ///
    /// `paused` means parked: the state changes only once every vCPU is parked,
    /// and both happen under `stopping`, which a switchover takes too.
    public func pause() {
        let wasRunning = stopping.withLock { _ -> Bool in
            guard runState.withLock({ $0 }) == .running else { return false }
            control.pause { kickAll() }
            // Only once parked; a guest that stopped itself meanwhile keeps its own state.
            return runState.withLock { state -> Bool in
                guard state == .running else { return false }
                state = .paused
                return true
            }
        }
        if wasRunning { emit("STOP") }
    }

    /// Resumes a paused guest (QMP `cont`).  Emits RESUME.
    ///
    /// From `postmigrate` too, as QEMU allows: the source guest runs again from
    /// where the migration stopped it.  Whoever says `cont` there answers for the
    /// destination not running the same guest.  Never from `inmigrate`: a
    /// destination whose load failed holds no valid guest.
    public func resume() throws(MachineError) {
        let resumed = stopping.withLock { _ -> Bool in
            let resumed = runState.withLock { state -> Bool in
                guard state == .paused || state == .prelaunch || state == .postmigrate else { return false }
                state = .running
                return true
            }
            if resumed {
                tracker.state.withLock { $0.forgetLastBeats() }
                control.resume()
            }
            return resumed
        }
        guard resumed else {
            let current = state
            if current == .running { return }
            if current == .finishMigrate, let last = outgoingMigration, last.status.isPostcopy {
                throw .invalidState("the guest cannot be resumed from state 'finish-migrate': it runs on the destination of a "
                                    + "postcopy migration (\(last.status.rawValue)), where its newest memory is")
            }
            if current == .finishMigrate, let last = outgoingMigration, last.status == .failed, last.postcopyBytes > 0 || last.destinationMayRun {
                throw .invalidState("the guest cannot be resumed from state 'finish-migrate': a postcopy migration failed after "
                                    + "the destination started it, so its newest memory is there, not here")
            }
            throw .invalidState("the guest cannot be resumed from state '\(current.rawValue)'")
        }
        emit("RESUME")
    }

    /// Stops the vCPUs for good (QMP `quit`); `waitUntilFinished()` then returns.
    public func quit() {
        end {
            runState.withLock { $0 = .shutdown }
            emit("SHUTDOWN", data: ["guest": false, "reason": "host-qmp-quit"])
        }
    }

    /// Ends the machine once: stops every vCPU thread, runs `last` (before any
    /// waiter wakes), then marks it finished.  Later calls do nothing.
    func end(_ last: () -> Void = {}) {
        let first = lifecycle.withLock { phase -> Bool in
            guard phase == .live else { return false }
            phase = .quitting
            return true
        }
        guard first else { return }
        // An incoming load stops, as it would with the process; a vCPU waiting on a
        // page a postcopy will now never bring could not exit otherwise.  One still
        // waiting for its source stops listening (its thread's accept fails).
        let incoming = migration.state.withLock { $0.incoming }
        incoming?.destination.withLock { $0 }?.abort()
        incoming?.listener?.close()
        // A paused postcopy's source will never be resumed now.
        migration.state.withLock { $0.outgoing }?.abandon()
        control.terminate { kickAll() }
        last()
        lifecycle.withLock { $0 = .finished }
    }

    /// Blocks until `quit()` or a guest shutdown.
    public func waitUntilFinished() async {
        while !isFinished { try? await Task.sleep(for: .milliseconds(20)) }
    }

    public var isFinished: Bool { lifecycle.withLock { $0 == .finished } }
    /// Not quitting or quit.
    var isLive: Bool { lifecycle.withLock { $0 == .live } }

    func kickAll() { for vcpu in vcpus { vcpu.kick() } }

    /// The guest stopped itself (triple fault, panic, KVM internal error).
    func guestStopped(_ state: RunState, reason: String) {
        let changed = runState.withLock { current -> Bool in
            guard current == .running else { return false }
            current = state
            return true
        }
        guard changed else { return }
        // This is a vCPU thread, which must return to park: another thread waits for it.
        // (A switchover parks the vCPUs itself, whatever the run state says.)
        HostThread.start("ferry-stop") { [self] in
            stopping.withLock { _ in control.pause { kickAll() } }
            switch state {
            case .guestPanicked: emit("GUEST_PANICKED", data: ["action": "pause", "info": ["type": "ferry", "reason": .string(reason)]])
            case .shutdown: emit("SHUTDOWN", data: ["guest": true, "reason": .string(reason)])
            default: emit("STOP")
            }
        }
    }

    func emit(_ name: String, data: JSONValue? = nil) {
        let now = Date().timeIntervalSince1970
        let seconds = Int64(now)
        eventSink(QMPEvent(name: name, data: data, seconds: seconds, microseconds: Int64((now - Double(seconds)) * 1_000_000)))
    }
}

/// A device whose kernel call failed (an interrupt line KVM would not set)
/// cannot go on silently: the guest stops with an internal error naming it,
/// as QEMU stops on a KVM failure.  Holds the machine weakly (the machine owns
/// the devices that report here).
final class DeviceFaults: Sendable {
    struct Reference { weak var machine: Machine? }
    let reference = Mutex(Reference())
    let first = Mutex<String?>(nil)

    func attach(_ machine: Machine) { reference.withLock { $0.machine = machine } }

    func report(_ reason: String) {
        first.withLock { if $0 == nil { $0 = reason } }
        reference.withLock { $0.machine }?.guestStopped(.internalError, reason: reason)
    }

    /// The first fault reported, if any.
    var firstFault: String? { first.withLock { $0 } }
}
