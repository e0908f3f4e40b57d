import EmbeddedGuest
import GuestMemory

/// Everything `ferry run` decides about a VM before it starts.
public struct MachineConfiguration: Sendable {
    public enum Boot: Sendable {
        /// The embedded test guest running `WorkloadSpec`.
        case embedded(WorkloadSpec)
        /// An outside PVH ELF kernel.
        case kernel(image: [UInt8], commandLine: String, initrd: [UInt8]?)
    }

    public static let cpuRange = 1...32

    public var memoryBytes: UInt64
    public var backend: MemoryBackend
    public var cpus: Int
    public var boot: Boot
    /// Allocate all guest RAM up front (QEMU's `-mem-prealloc`).
    public var preallocate = false
    /// Devices on virtio-mmio transports, in slot order.
    public var devices: [DeviceSpec] = []

    public init(memoryBytes: UInt64, backend: MemoryBackend = .anon, cpus: Int = 1, boot: Boot = .embedded(.idle)) {
        self.memoryBytes = memoryBytes
        self.backend = backend
        self.cpus = cpus
        self.boot = boot
    }

    /// Whether an incoming migration allocates RAM ahead of the arriving pages
    /// (`ChunkPopulator`).  Not when RAM was preallocated: every page is there
    /// already, and walking them again only takes CPU from the receivers (a
    /// fifth of the destination's CPU in a 2-channel multifd migration).  Not
    /// when a switch to postcopy may come: it would free them again.
    public func allocatesAheadOnIncoming(postcopyExpected: Bool) -> Bool {
        !preallocate && !postcopyExpected
    }

    /// Checks what can be checked before touching KVM or mapping memory.
    public func validate(hostMemoryBytes: UInt64 = HostMemory.totalBytes) throws(MachineError) {
        guard Self.cpuRange.contains(cpus) else { throw .invalidCPUCount(cpus) }
        let minimum: UInt64 = 8 << 20
        guard memoryBytes >= minimum else { throw .memoryTooSmall(memoryBytes, minimum: minimum) }
        guard memoryBytes % UInt64(backend.pageSize.byteCount) == 0 else {
            throw .memory(.invalidSize(memoryBytes, pageSize: backend.pageSize))
        }
        if hostMemoryBytes > 0, memoryBytes > hostMemoryBytes {
            throw .memoryTooLarge(memoryBytes, host: hostMemoryBytes)
        }
        if devices.count > 1 { throw .invalidState("at most one --device is supported (one virtio-balloon)") }
        if case .embedded = boot, memoryBytes > GuestLimits.embeddedGuestMaximumMemory {
            throw .memoryTooLarge(memoryBytes, host: GuestLimits.embeddedGuestMaximumMemory)
        }
    }
}

enum GuestLimits {
    /// The embedded guest maps RAM up to 68 GiB of guest physical space (HIGH_PD_COUNT in layout.h).
    static let embeddedGuestMaximumMemory: UInt64 = 67 << 30
}
