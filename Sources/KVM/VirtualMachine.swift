import CLinuxUAPI
import GuestMemory
import Synchronization

/// A KVM virtual machine: the VM scope of KVM's ioctls.  Shared by vCPU
/// threads and devices, so a class; closes its descriptor on deinit.
public final class VirtualMachine: Sendable {
    let descriptor: Int32
    let system: KVMSystem
    let runAreaSize: Int
    /// Keeps every mapped RAM block alive as long as its slot exists, with the slot's size in pages.
    private let mapped = Mutex<[MemorySlot: (block: RAMBlock, pageCount: Int)]>([:])

    init(descriptor: Int32, system: KVMSystem, runAreaSize: Int) {
        self.descriptor = descriptor
        self.system = system
        self.runAreaSize = runAreaSize
    }

    deinit { Ioctl.closeDescriptor(descriptor) }

    /// Creates the in-kernel PIC, IOAPIC and LAPICs (`KVM_CREATE_IRQCHIP`) and
    /// the PIT (`KVM_CREATE_PIT2`).  Must precede vCPU creation.
    public func createPlatform() throws(KVMError) {
        // The TSS and identity-map pages KVM needs on Intel hosts: in the 3..4 GiB hole, off RAM.
        try Ioctl.value(descriptor, .setTSSAddress, 0xfffb_d000)
        var identityMap: UInt64 = 0xfffb_c000
        try Ioctl.pointer(descriptor, .setIdentityMapAddress, &identityMap)
        try Ioctl.value(descriptor, .createIRQChip)
        var pit = kvm_pit_config()
        pit.flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        try Ioctl.pointer(descriptor, .createPIT2, &pit)
    }

    /// Installs every placement of `block` as a memory slot, numbering slots
    /// from `firstSlot`; returns the slots used.  Corresponds to
    /// `KVM_SET_USER_MEMORY_REGION`.  Safe, unlike the raw ioctl: the VM retains
    /// `block` (and so its host mapping) for as long as the slots exist.
    @discardableResult
    public func map(_ block: RAMBlock, firstSlot: MemorySlot, logDirtyPages: Bool) throws(KVMError) -> [MemorySlot] {
        var slots: [MemorySlot] = []
        for (index, placement) in block.placements.enumerated() {
            let slot = MemorySlot(rawValue: firstSlot.rawValue + UInt32(index))
            var region = kvm_userspace_memory_region()
            region.slot = slot.rawValue
            region.flags = logDirtyPages ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0
            region.guest_phys_addr = placement.guestRange.start.rawValue
            region.memory_size = placement.guestRange.byteCount
            region.userspace_addr = block.mapping.hostAddress(at: Int(placement.blockOffset))
            try Ioctl.pointer(descriptor, .setUserMemoryRegion, &region)
            let pages = Int(placement.guestRange.byteCount) / PageSize.base.byteCount
            mapped.withLock { $0[slot] = (block, pages) }
            slots.append(slot)
        }
        return slots
    }

    /// The number of 4 KiB pages `slot` covers, as `map` installed it; nil for a slot never mapped.
    func pageCount(of slot: MemorySlot) -> Int? { mapped.withLock { $0[slot]?.pageCount } }

    /// Raises or lowers an interrupt line of the in-kernel PIC/IOAPIC (`KVM_IRQ_LINE`).
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var line = kvm_irq_level()
        line.irq = irq
        line.level = level ? 1 : 0
        try Ioctl.pointer(descriptor, .irqLine, &line)
    }

    /// Corresponds to `KVM_CREATE_VCPU`; `index` becomes the vCPU id and APIC ID.
    public func makeVCPU(_ index: VCPUIndex) throws(KVMError) -> VirtualCPU {
        let fd = try Ioctl.value(descriptor, .createVCPU, UInt(index.rawValue))
        do {
            // SAFETY: the VirtualCPU owns the mapping from here on and unmaps it in deinit.
            let run = unsafe try Ioctl.mapShared(fd, byteCount: runAreaSize)
            return unsafe VirtualCPU(descriptor: fd, index: index, runArea: run, runAreaSize: runAreaSize, vm: self)
        } catch {
            Ioctl.closeDescriptor(fd)
            throw error
        }
    }

    public var supportedCPUID: CPUIDTable { get throws(KVMError) { try system.supportedCPUID() } }
}

/// A KVM memory slot number.
public struct MemorySlot: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
}

/// A vCPU number: the KVM vCPU id and the guest's APIC ID.
public struct VCPUIndex: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public init(_ rawValue: Int) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "vcpu\(rawValue)" }
}
