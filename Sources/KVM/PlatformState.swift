import CLinuxUAPI

/// The VM-wide in-kernel devices' state: both 8259 PICs, the IOAPIC, the PIT
/// and kvm-clock, as the kernel's structs in bytes.
public struct PlatformState: Equatable, Sendable {
    public enum Part: UInt8, CaseIterable, Sendable, KVMStatePart {
        case picMaster = 1  // kvm_irqchip, chip 0
        case picSlave = 2   // kvm_irqchip, chip 1
        case ioapic = 3     // kvm_irqchip, chip 2
        case pit = 4        // kvm_pit_state2
        case clock = 5      // kvm_clock_data

        public var byteCount: Int {
            switch self {
            case .picMaster, .picSlave, .ioapic: MemoryLayout<kvm_irqchip>.size
            case .pit: MemoryLayout<kvm_pit_state2>.size
            case .clock: MemoryLayout<kvm_clock_data>.size
            }
        }

        var chipID: UInt32? {
            switch self {
            case .picMaster: UInt32(KVM_IRQCHIP_PIC_MASTER)
            case .picSlave: UInt32(KVM_IRQCHIP_PIC_SLAVE)
            case .ioapic: UInt32(KVM_IRQCHIP_IOAPIC)
            default: nil
            }
        }
    }

    public var parts: [Part: [UInt8]]
    public init(parts: [Part: [UInt8]]) { self.parts = parts }
}

extension VirtualMachine {
    /// Reads the PICs, IOAPIC, PIT and kvm-clock.  The vCPUs must be stopped.
    public func capturePlatformState() throws(KVMError) -> PlatformState {
        var parts: [PlatformState.Part: [UInt8]] = [:]
        for part in [PlatformState.Part.picMaster, .picSlave, .ioapic] {
            var chip = kvm_irqchip()
            chip.chip_id = part.chipID!
            parts[part] = try Ioctl.read(descriptor, .getIRQChip, chip)
        }
        parts[.pit] = try Ioctl.read(descriptor, .getPIT2, kvm_pit_state2())
        parts[.clock] = try Ioctl.read(descriptor, .getClock, kvm_clock_data())
        return PlatformState(parts: parts)
    }

    /// Loads `state`, checking each part's size and chip number first.
    public func restorePlatformState(_ state: PlatformState) throws(VCPUStateError) {
        func part<T>(_ part: PlatformState.Part, _ zero: T) throws(VCPUStateError) -> T {
            try decodePart(state.parts, part, zero)
        }
        var chips: [kvm_irqchip] = []
        for which in [PlatformState.Part.picMaster, .picSlave, .ioapic] {
            let chip = try part(which, kvm_irqchip())
            guard chip.chip_id == which.chipID! else { throw .invalid("\(which) state names chip \(chip.chip_id)") }
            chips.append(chip)
        }
        var pit = try part(.pit, kvm_pit_state2())
        var clock = try part(.clock, kvm_clock_data())
        // Only the clock value is restored; the source's host-time fields mean nothing here.
        clock.flags = 0
        do {
            for var chip in chips { try Ioctl.pointer(descriptor, .setIRQChip, &chip) }
            try Ioctl.pointer(descriptor, .setPIT2, &pit)
            try Ioctl.pointer(descriptor, .setClock, &clock)
        } catch { throw .kvm(error) }
    }
}

extension KVMSystem {
    /// The MSRs this KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    ///
    /// - Throws: ``KVMError/ioctl(_:_:)`` when the list cannot be read: a vCPU
    ///   is never captured without its MSRs.
    func msrIndexList() throws(KVMError) -> [UInt32] {
        var list = CLinuxUAPI_msr_list()
        list.header.nmsrs = UInt32(CLINUXUAPI_MAX_MSR_INDICES)
        try Ioctl.pointer(descriptor, .getMSRIndexList, &list)
        let count = min(Int(list.header.nmsrs), Int(CLINUXUAPI_MAX_MSR_INDICES))
        return unsafe withUnsafeBytes(of: &list.indices) { raw in
            unsafe Array(raw.bindMemory(to: UInt32.self).prefix(count))
        }
    }
}
