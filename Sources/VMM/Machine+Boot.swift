import EmbeddedGuest
import GuestMemory
import KVM
import PVHBoot

/// One KVM memory slot: which block and placement it maps.
struct MemorySlotMapping: Sendable {
    let slot: MemorySlot
    let block: RAMBlock
    let firstSlotOfBlock: MemorySlot
    let placement: RAMBlock.Placement

    var pageCount: Int { Int(placement.guestRange.byteCount / UInt64(PageSize.base.byteCount)) }
    var firstBlockPage: Int { Int(placement.blockOffset / UInt64(PageSize.base.byteCount)) }
}

extension Machine {
    /// Maps RAM, loads the kernel (embedded or outside, both PVH) and creates
    /// the vCPUs at its 32-bit entry, as the PVH boot ABI says.
    static func boot(_ configuration: MachineConfiguration, vm: VirtualMachine, memory: GuestMemoryMap, loadKernel: Bool)
        throws(MachineError) -> ([VirtualCPU], UInt32, [MemorySlotMapping]) {
        do {
            var slot: UInt32 = 0
            var mappings: [MemorySlotMapping] = []
            for block in memory.blocks {
                let first = MemorySlot(rawValue: slot)
                let slots = try vm.map(block, firstSlot: first, logDirtyPages: false)
                for (placement, number) in zip(block.placements, slots) {
                    mappings.append(MemorySlotMapping(slot: number, block: block, firstSlotOfBlock: first, placement: placement))
                }
                slot += UInt32(slots.count)
            }
            let cpuid = try vm.supportedCPUID
            var vcpus: [VirtualCPU] = []
            for index in 0..<configuration.cpus {
                let vcpu = try vm.makeVCPU(VCPUIndex(index))
                var table = cpuid
                table.setAPICID(UInt32(index))
                try vcpu.setCPUID(table)
                vcpus.append(vcpu)
            }
            let tscKHz = try vcpus[0].tscKHz()
            guard loadKernel else { return (vcpus, tscKHz, mappings) }
            let entry = try Self.loadKernel(configuration, tscKHz: tscKHz, into: memory)
            // Only the BSP starts at the PVH entry; the APs wait for INIT/SIPI
            // from the guest, as on hardware and under QEMU.
            try enterPVH(vcpus[0], entry: entry)
            return (vcpus, tscKHz, mappings)
        } catch let error as KVMError { throw .kvm(error) }
        catch let error as PVHError { throw .boot(error) }
        catch let error as MachineError { throw error }
        catch { throw .invalidState("\(error)") }
    }

    /// The virtio-mmio transports are announced on the command line, as microvm
    /// without ACPI does (`virtio_mmio.device=512@ADDRESS:IRQ`).
    static func loadKernel(_ configuration: MachineConfiguration, tscKHz: UInt32, into memory: GuestMemoryMap) throws(PVHError) -> PVHLoader.Entry {
        let devices = VirtioMMIOLayout.commandLine(count: configuration.devices.count)
        switch configuration.boot {
        case .embedded(let workload):
            let commandLine = EmbeddedGuest.commandLine(workload: workload, cpus: configuration.cpus, tscKHz: tscKHz) + devices
            return try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: commandLine, initrd: nil, into: memory)
        case .kernel(let image, let commandLine, let initrd):
            return try PVHLoader.load(kernel: image, commandLine: commandLine + devices, initrd: initrd, into: memory)
        }
    }

    /// PVH entry state for the boot vCPU: 32-bit protected mode, flat 4 GiB
    /// segments, paging off, %ebx = hvm_start_info.
    static func enterPVH(_ vcpu: VirtualCPU, entry: PVHLoader.Entry) throws(KVMError) {
        var special = try vcpu.specialRegisters()
        let code = SegmentRegister(base: 0, limit: 0xffff_ffff, selector: 0x10, type: 0xb, db: true, g: true)
        let data = SegmentRegister(base: 0, limit: 0xffff_ffff, selector: 0x18, type: 0x3, db: true, g: true)
        special.cs = code
        (special.ds, special.es, special.fs, special.gs, special.ss) = (data, data, data, data, data)
        special.tr = SegmentRegister(base: 0, limit: 0x67, selector: 0x20, type: 0xb, db: false, s: false, g: false)
        special.cr0 = 0x11          // PE | ET
        special.cr3 = 0
        special.cr4 = 0
        special.efer = 0
        try vcpu.setSpecialRegisters(special)
        var registers = Registers()
        registers.rip = UInt64(entry.entryPoint)
        registers.rbx = UInt64(entry.startInfoAddress)
        registers.rflags = 0x2
        try vcpu.setRegisters(registers)
        try vcpu.makeRunnable()
    }
}
