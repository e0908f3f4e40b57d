import CLinuxUAPI

/// Everything KVM holds for one vCPU, as the kernel's own structs in bytes:
/// what a migration moves so the guest continues mid-instruction elsewhere.
///
/// Each part is one `KVM_GET_*` struct; `restore` checks every size before a
/// byte reaches the kernel.
public struct VCPUState: Equatable, Sendable {
    /// The pieces of vCPU state, one KVM struct each.
    public enum Part: UInt8, CaseIterable, Sendable, KVMStatePart {
        case registers = 1      // kvm_regs
        case special = 2        // kvm_sregs
        case xsave = 3          // kvm_xsave (FPU, SSE, AVX)
        case xcrs = 4           // kvm_xcrs
        case events = 5         // kvm_vcpu_events (pending exceptions, interrupts, NMI)
        case lapic = 6          // kvm_lapic_state (registers incl. timer)
        case debugRegisters = 7 // kvm_debugregs
        case mpState = 8        // kvm_mp_state (runnable, halted, waiting for SIPI)

        /// The kernel struct's size: a part of any other size is refused.
        public var byteCount: Int {
            switch self {
            case .registers: MemoryLayout<kvm_regs>.size
            case .special: MemoryLayout<kvm_sregs>.size
            case .xsave: MemoryLayout<kvm_xsave>.size
            case .xcrs: MemoryLayout<kvm_xcrs>.size
            case .events: MemoryLayout<kvm_vcpu_events>.size
            case .lapic: MemoryLayout<kvm_lapic_state>.size
            case .debugRegisters: MemoryLayout<kvm_debugregs>.size
            case .mpState: MemoryLayout<kvm_mp_state>.size
            }
        }
    }

    /// One model-specific register.
    public struct MSR: Equatable, Sendable {
        public let index: UInt32
        public let value: UInt64
        public init(index: UInt32, value: UInt64) { (self.index, self.value) = (index, value) }
    }

    public var parts: [Part: [UInt8]]
    public var msrs: [MSR]
    public var tscKHz: UInt32

    public init(parts: [Part: [UInt8]], msrs: [MSR], tscKHz: UInt32) {
        self.parts = parts
        self.msrs = msrs
        self.tscKHz = tscKHz
    }
}

extension VirtualCPU {
    /// Reads the whole vCPU state.  The vCPU must not be running.
    public func captureState() throws(KVMError) -> VCPUState {
        let parts: [VCPUState.Part: [UInt8]] = [
            .registers: try Ioctl.read(descriptor, .getRegs, kvm_regs()),
            .special: try Ioctl.read(descriptor, .getSregs, kvm_sregs()),
            .xsave: try Ioctl.read(descriptor, .getXSave, kvm_xsave()),
            .xcrs: try Ioctl.read(descriptor, .getXCRs, kvm_xcrs()),
            .events: try Ioctl.read(descriptor, .getVCPUEvents, kvm_vcpu_events()),
            .lapic: try Ioctl.read(descriptor, .getLAPIC, kvm_lapic_state()),
            .debugRegisters: try Ioctl.read(descriptor, .getDebugRegs, kvm_debugregs()),
            .mpState: try Ioctl.read(descriptor, .getMPState, kvm_mp_state()),
        ]
        let msrs = try readMSRs(try VCPUState.msrsToSave(from: try vm.system.msrIndexList()))
        return VCPUState(parts: parts, msrs: msrs, tscKHz: try tscKHz())
    }

    /// Loads `state` into this (not running) vCPU, in the order KVM needs:
    /// special registers, registers, XSAVE, XCRs, MSRs, events, MP state,
    /// LAPIC, then the TSC deadline and debug registers.
    public func restoreState(_ state: VCPUState) throws(VCPUStateError) {
        func part<T>(_ part: VCPUState.Part, _ zero: T) throws(VCPUStateError) -> T {
            try decodePart(state.parts, part, zero)
        }
        var sregs = try part(.special, kvm_sregs())
        var regs = try part(.registers, kvm_regs())
        var xsave = try part(.xsave, kvm_xsave())
        var xcrs = try part(.xcrs, kvm_xcrs())
        var events = try part(.events, kvm_vcpu_events())
        var mp = try part(.mpState, kvm_mp_state())
        var lapic = try part(.lapic, kvm_lapic_state())
        var debug = try part(.debugRegisters, kvm_debugregs())
        guard state.msrs.count <= VCPUState.maximumMSRCount else { throw .tooManyMSRs(state.msrs.count) }
        let (msrsBeforeLAPIC, msrsAfterLAPIC) = VCPUState.restoreOrder(state.msrs)
        // Pending NMI and SIPI vector are only applied when flagged valid, as QEMU does.
        events.flags |= UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR)
        do {
            if state.tscKHz != 0, state.tscKHz != (try tscKHz()) {
                try Ioctl.value(descriptor, .setTSCKHz, UInt(state.tscKHz))
            }
            try Ioctl.pointer(descriptor, .setSregs, &sregs)
            try Ioctl.pointer(descriptor, .setRegs, &regs)
            try Ioctl.pointer(descriptor, .setXSave, &xsave)
            try Ioctl.pointer(descriptor, .setXCRs, &xcrs)
            try writeMSRs(msrsBeforeLAPIC)
            try Ioctl.pointer(descriptor, .setVCPUEvents, &events)
            try Ioctl.pointer(descriptor, .setMPState, &mp)
            try Ioctl.pointer(descriptor, .setLAPIC, &lapic)
            try writeMSRs(msrsAfterLAPIC)
            try Ioctl.pointer(descriptor, .setDebugRegs, &debug)
        } catch { throw .kvm(error) }
    }

    /// Reads `indices` (`KVM_GET_MSRS`), all of them or an error.
    func readMSRs(_ indices: [UInt32]) throws(KVMError) -> [VCPUState.MSR] {
        var request = CLinuxUAPI_msrs()
        let count = indices.count
        guard count <= Int(CLINUXUAPI_MAX_MSRS) else { throw .ioctl(.getMSRs, .argListTooLong) }
        request.header.nmsrs = UInt32(count)
        unsafe withUnsafeMutableBytes(of: &request.entries) { raw in
            let entries = unsafe raw.bindMemory(to: kvm_msr_entry.self)
            for i in 0..<count { unsafe entries[i].index = indices[i] }
        }
        let read = Int(try Ioctl.pointer(descriptor, .getMSRs, &request))
        // KVM stops at the first MSR it cannot read: a short read would migrate the vCPU without the rest.
        guard read == count else { throw .msrNotReadable(indices[min(max(read, 0), count - 1)]) }
        return unsafe withUnsafeBytes(of: &request.entries) { raw in
            let entries = unsafe raw.bindMemory(to: kvm_msr_entry.self)
            return (0..<count).map { unsafe VCPUState.MSR(index: entries[$0].index, value: entries[$0].data) }
        }
    }

    func writeMSRs(_ msrs: [VCPUState.MSR]) throws(KVMError) {
        guard !msrs.isEmpty else { return }
        var request = CLinuxUAPI_msrs()
        request.header.nmsrs = UInt32(msrs.count)
        unsafe withUnsafeMutableBytes(of: &request.entries) { raw in
            let entries = unsafe raw.bindMemory(to: kvm_msr_entry.self)
            for (i, msr) in msrs.enumerated() {
                unsafe entries[i].index = msr.index
                unsafe entries[i].data = msr.value
            }
        }
        let written = Int(try Ioctl.pointer(descriptor, .setMSRs, &request))
        guard written == msrs.count else {
            throw .ioctl(.setMSRs, .invalidArgument)     // KVM stops at the first MSR it refuses
        }
    }
}

/// Why a vCPU state could not be loaded.
public enum VCPUStateError: Error, Equatable, Sendable, CustomStringConvertible {
    case missingPart(String)
    case wrongSize(String, Int, expected: Int)
    case tooManyMSRs(Int)
    case invalid(String)
    case kvm(KVMError)

    public var description: String {
        switch self {
        case .missingPart(let part): "the state lacks its \(part) part"
        case .wrongSize(let part, let size, let expected): "the \(part) state is \(size) bytes, expected \(expected)"
        case .tooManyMSRs(let count): "vCPU state has \(count) MSRs, more than \(CLINUXUAPI_MAX_MSRS)"
        case .invalid(let why): why
        case .kvm(let error): error.description
        }
    }
}

/// One part of a saved state: a kernel struct of a fixed size.
protocol KVMStatePart: Hashable {
    var byteCount: Int { get }
}

/// The struct a part's bytes hold, once their presence and size are checked.
func decodePart<P: KVMStatePart, T>(_ parts: [P: [UInt8]], _ part: P, _ zero: T) throws(VCPUStateError) -> T {
    guard let bytes = parts[part] else { throw .missingPart("\(part)") }
    guard let value = Ioctl.value(T.self, from: bytes, zero: zero) else {
        throw .wrongSize("\(part)", bytes.count, expected: part.byteCount)
    }
    return value
}
