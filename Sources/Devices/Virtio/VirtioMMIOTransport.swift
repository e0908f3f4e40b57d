import GuestMemory
import Synchronization

/// A virtio-mmio version 2 transport (virtio 1.x, 4.2) carrying one device:
/// registers, feature negotiation, status, split virtqueues and the interrupt
/// line.  What QEMU's `microvm` machine gives a `-device virtio-*-device`.
///
/// Queues are processed on the vCPU thread that wrote QueueNotify, under the
/// transport's lock.  A driver that breaks the rules (a ring outside RAM, a
/// descriptor loop) gets DEVICE_NEEDS_RESET and a config interrupt; the device
/// then ignores its queues until the driver resets it.
public final class VirtioMMIOTransport<Backend: VirtioBackend & VirtioBackendState>: MMIODevice, Sendable {
    /// The transport's register window, as microvm lays transports out.
    public static var windowSize: UInt64 { 0x200 }

    struct State: Sendable {
        var backend: Backend
        var status = VirtioStatus()
        var deviceFeaturesSelect: UInt32 = 0
        var driverFeaturesSelect: UInt32 = 0
        var driverFeatures: UInt64 = 0
        var negotiated: UInt64 = 0
        var queueSelect: UInt32 = 0
        var queues: [SplitVirtqueue]
        var interruptStatus: UInt32 = 0
        var configGeneration: UInt32 = 0
        /// Why the device stopped (DEVICE_NEEDS_RESET), until the driver resets it.
        var broken: VirtqueueError?

        init(backend: Backend) {
            self.backend = backend
            queues = (0..<backend.queueCount).map { SplitVirtqueue(index: $0) }
        }

        mutating func reset() {
            backend.reset()
            let kept = backend
            self = State(backend: kept)
        }
    }

    let memory: GuestMemoryMap
    let state: Mutex<State>
    let setInterruptLine: @Sendable (Bool) -> Void
    /// Told once each time the device breaks, with the reason (the VMM logs it).
    let onBroken: @Sendable (VirtqueueError) -> Void

    public init(_ backend: Backend, memory: GuestMemoryMap, setInterruptLine: @escaping @Sendable (Bool) -> Void,
                onBroken: @escaping @Sendable (VirtqueueError) -> Void = { _ in }) {
        self.memory = memory
        self.state = Mutex(State(backend: backend))
        self.setInterruptLine = setInterruptLine
        self.onBroken = onBroken
    }

    /// Why the device needs a reset, if it does.
    public var brokenReason: VirtqueueError? { state.withLock { $0.broken } }
    public var status: VirtioStatus { state.withLock { $0.status } }

    // MARK: guest accesses

    public func read(offset: UInt64, count: Int) -> [UInt8] {
        if offset >= VirtioMMIORegister.config {
            let config = state.withLock { $0.backend.configBytes(negotiated: $0.negotiated) }
            let start = Int(offset - VirtioMMIORegister.config)
            return (start..<(start + count)).map { $0 < config.count ? config[$0] : 0 }
        }
        // Registers are 32-bit; any other access reads 0, as QEMU's transport answers.
        guard count == 4, offset % 4 == 0, let register = VirtioMMIORegister(rawValue: offset) else {
            return [UInt8](repeating: 0, count: count)
        }
        let value = state.withLock { s -> UInt32 in
            switch register {
            case .magicValue: return VirtioMMIORegister.magic
            case .version: return 2
            case .deviceID: return s.backend.deviceID
            case .vendorID: return VirtioMMIORegister.vendor
            case .deviceFeatures:
                return s.deviceFeaturesSelect < 2 ? UInt32(truncatingIfNeeded: s.backend.deviceFeatures >> (32 * UInt64(s.deviceFeaturesSelect))) : 0
            case .queueSizeMax: return Int(s.queueSelect) < s.queues.count ? UInt32(SplitVirtqueue.maximumSize) : 0
            case .queueReady: return Int(s.queueSelect) < s.queues.count && s.queues[Int(s.queueSelect)].ready ? 1 : 0
            case .interruptStatus: return s.interruptStatus
            case .status: return s.status.rawValue
            case .configGeneration: return s.configGeneration
            default: return 0       // write-only registers
            }
        }
        return (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    public func write(offset: UInt64, bytes: [UInt8]) {
        let line: Bool?
        if offset >= VirtioMMIORegister.config {
            line = mutate { s, context in
                s.backend.writeConfig(offset: Int(offset - VirtioMMIORegister.config), bytes: bytes, context: &context)
            }
        } else {
            guard bytes.count == 4, offset % 4 == 0, let register = VirtioMMIORegister(rawValue: offset) else { return }
            let value = bytes.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            line = writeRegister(register, value)
        }
        if let line { setInterruptLine(line) }
    }

    /// Runs `body` on the backend with a context over its queues, then raises
    /// what it asked for.  Returns the new interrupt line level, or nil if unchanged.
    func mutate(_ body: (inout State, inout VirtioContext) throws(VirtqueueError) -> Void) -> Bool? {
        let (line, broke) = state.withLock { s -> (Bool?, VirtqueueError?) in
            var context = VirtioContext(memory: memory, queues: s.queues, negotiated: s.negotiated)
            var broke: VirtqueueError?
            do throws(VirtqueueError) { try body(&s, &context) } catch { broke = error }
            s.queues = context.queues
            let before = s.interruptStatus
            if context.usedReturned { s.interruptStatus |= VirtioInterrupt.usedBuffer }
            if context.configChanged {
                s.configGeneration &+= 1
                if s.status.contains(.driverOK) { s.interruptStatus |= VirtioInterrupt.configChange }
            }
            if let broke, s.broken == nil {
                s.broken = broke
                s.status.insert(.deviceNeedsReset)
                if s.status.contains(.driverOK) { s.interruptStatus |= VirtioInterrupt.configChange }
            }
            return (before == s.interruptStatus ? nil : s.interruptStatus != 0, broke)
        }
        if let broke { onBroken(broke) }
        return line
    }

    private func writeRegister(_ register: VirtioMMIORegister, _ value: UInt32) -> Bool? {
        switch register {
        case .queueNotify:
            return mutate { s, context throws(VirtqueueError) in
                let index = Int(value)
                guard s.broken == nil, s.status.contains(.driverOK), index < s.queues.count, s.queues[index].ready else { return }
                try s.backend.process(queue: index, context: &context)
            }
        case .interruptAcknowledge:
            return state.withLock { s -> Bool? in
                let before = s.interruptStatus
                s.interruptStatus &= ~value
                return before == s.interruptStatus ? nil : s.interruptStatus != 0
            }
        case .status:
            return statusWritten(VirtioStatus(rawValue: value & 0xff))
        case .queueReady:
            return mutate { s, context throws(VirtqueueError) in
                let index = Int(s.queueSelect)
                guard index < context.queues.count else { return }
                guard value & 1 != 0 else { context.queues[index].ready = false; return }
                try context.queues[index].validate(memory)
                context.queues[index].ready = true
            }
        default:
            state.withLock { s in
                let q = Int(s.queueSelect)
                let hasQueue = q < s.queues.count && !s.queues[q].ready      // a live queue's layout is fixed
                switch register {
                case .deviceFeaturesSelect: s.deviceFeaturesSelect = value
                case .driverFeaturesSelect: s.driverFeaturesSelect = value
                case .driverFeatures:
                    guard s.driverFeaturesSelect < 2, !s.status.contains(.featuresOK) else { return }
                    let shift = 32 * UInt64(s.driverFeaturesSelect)
                    s.driverFeatures = s.driverFeatures & ~(0xffff_ffff << shift) | UInt64(value) << shift
                case .queueSelect: s.queueSelect = value
                case .queueSize where hasQueue: s.queues[q].size = value
                case .queueDescriptorLow where hasQueue: s.queues[q].descriptorTable = s.queues[q].descriptorTable & ~0xffff_ffff | UInt64(value)
                case .queueDescriptorHigh where hasQueue: s.queues[q].descriptorTable = s.queues[q].descriptorTable & 0xffff_ffff | UInt64(value) << 32
                case .queueDriverLow where hasQueue: s.queues[q].availableRing = s.queues[q].availableRing & ~0xffff_ffff | UInt64(value)
                case .queueDriverHigh where hasQueue: s.queues[q].availableRing = s.queues[q].availableRing & 0xffff_ffff | UInt64(value) << 32
                case .queueDeviceLow where hasQueue: s.queues[q].usedRing = s.queues[q].usedRing & ~0xffff_ffff | UInt64(value)
                case .queueDeviceHigh where hasQueue: s.queues[q].usedRing = s.queues[q].usedRing & 0xffff_ffff | UInt64(value) << 32
                default: break      // read-only registers, or a queue that is live or absent
                }
            }
            return nil
        }
    }

    /// Status 0 resets; FEATURES_OK stays clear unless the driver's features are
    /// a subset of the device's and include VERSION_1 (virtio 1.x, 3.1.1).
    private func statusWritten(_ requested: VirtioStatus) -> Bool? {
        state.withLock { s -> Bool? in
            if requested.isEmpty {
                let hadInterrupt = s.interruptStatus != 0
                s.reset()
                return hadInterrupt ? false : nil
            }
            var next = requested
            next.remove(.deviceNeedsReset)
            if next.contains(.featuresOK) && !s.status.contains(.featuresOK) {
                let acceptable = s.driverFeatures & ~s.backend.deviceFeatures == 0 && s.driverFeatures & VirtioFeature.version1 != 0
                if acceptable {
                    s.negotiated = s.driverFeatures
                    s.backend.featuresNegotiated(s.negotiated)
                } else {
                    next.remove(.featuresOK)
                }
            }
            if s.status.contains(.deviceNeedsReset) { next.insert(.deviceNeedsReset) }
            s.status = next
            return nil
        }
    }

    // MARK: host side

    /// Runs a host-side change (a new balloon target, a migration's hint command)
    /// on the backend, as a queue notification would.
    public func withBackend<R>(_ body: (inout Backend, inout VirtioContext) -> R) -> R {
        var result: R?
        let line = mutate { s, context in result = body(&s.backend, &context) }
        if let line { setInterruptLine(line) }
        return result!
    }

    /// The backend as it is now, for reading.
    public var backend: Backend { state.withLock { $0.backend } }
}
