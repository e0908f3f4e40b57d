import Glibc
import CLinuxUAPI
import Synchronization

/// A vCPU: the vCPU scope of KVM's ioctls plus its mmap'd `kvm_run` area.
///
/// One thread runs it (`run()`); any thread may `kick()` it out of `KVM_RUN`.
/// Closes its descriptor and unmaps the run area on deinit.
@safe public final class VirtualCPU: @unchecked Sendable {
    // @unchecked: `runArea` is written by the running thread and by `kick()`
    // (only `immediate_exit`, the byte KVM defines for exactly that race).
    let descriptor: Int32
    public let index: VCPUIndex
    let runArea: UnsafeMutableRawPointer
    let runAreaSize: Int
    let vm: VirtualMachine
    private let runner = Mutex<pthread_t?>(nil)
    let threadIDStorage = Mutex<Int32>(0)

    /// The signal used to kick vCPU threads; installed once per process.
    public static let kickSignal: Int32 = SIGUSR1

    init(descriptor: Int32, index: VCPUIndex, runArea: UnsafeMutableRawPointer, runAreaSize: Int, vm: VirtualMachine) {
        self.descriptor = descriptor
        self.index = index
        unsafe self.runArea = runArea
        self.runAreaSize = runAreaSize
        self.vm = vm
    }

    deinit {
        unsafe Ioctl.unmap(runArea, byteCount: runAreaSize)
        Ioctl.closeDescriptor(descriptor)
    }

    private var runState: UnsafeMutablePointer<kvm_run> { unsafe runArea.assumingMemoryBound(to: kvm_run.self) }

    // MARK: set-up

    /// Corresponds to `KVM_SET_CPUID2`.
    public func setCPUID(_ table: CPUIDTable) throws(KVMError) {
        var raw = table.raw
        try Ioctl.pointer(descriptor, .setCPUID2, &raw)
    }

    /// Makes the vCPU runnable now (`KVM_SET_MP_STATE`), not waiting for INIT/SIPI.
    public func makeRunnable() throws(KVMError) {
        var state = kvm_mp_state(mp_state: UInt32(KVM_MP_STATE_RUNNABLE))
        try Ioctl.pointer(descriptor, .setMPState, &state)
    }

    /// The guest TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    public func tscKHz() throws(KVMError) -> UInt32 {
        UInt32(bitPattern: try Ioctl.value(descriptor, .getTSCKHz))
    }

    // MARK: registers

    public func registers() throws(KVMError) -> Registers {
        var raw = kvm_regs()
        try Ioctl.pointer(descriptor, .getRegs, &raw)
        return Registers(raw)
    }

    public func setRegisters(_ registers: Registers) throws(KVMError) {
        var raw = registers.raw
        try Ioctl.pointer(descriptor, .setRegs, &raw)
    }

    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var raw = kvm_sregs()
        try Ioctl.pointer(descriptor, .getSregs, &raw)
        return SpecialRegisters(raw: raw)
    }

    public func setSpecialRegisters(_ registers: SpecialRegisters) throws(KVMError) {
        var raw = registers.raw
        try Ioctl.pointer(descriptor, .setSregs, &raw)
    }

    // MARK: running

    /// Records the calling thread as this vCPU's runner, so `kick()` can reach it.
    public func bindToCurrentThread() {
        Ioctl.installKickSignal(Self.kickSignal)
        runner.withLock { $0 = Ioctl.currentThread() }
        threadIDStorage.withLock { $0 = Ioctl.currentThreadID() }
    }

    /// Makes a running or about-to-run `KVM_RUN` return `.interrupted` soon.
    public func kick() {
        unsafe runState.pointee.immediate_exit = 1
        if let thread = runner.withLock({ $0 }) { Ioctl.kick(thread, signal: Self.kickSignal) }
    }

    /// Clears a kick that was not consumed by `run()`.
    public func clearKick() { unsafe runState.pointee.immediate_exit = 0 }

    /// Corresponds to `KVM_RUN`.  I/O reads must be answered with
    /// `completeIORead` before the next call.
    public func run() throws(KVMError) -> VCPUExit {
        guard try Ioctl.run(descriptor) != nil else {
            clearKick()
            return .interrupted
        }
        return decodeExit()
    }

    private func decodeExit() -> VCPUExit {
        switch Int32(unsafe runState.pointee.exit_reason) {
        case KVM_EXIT_IO:
            let io = unsafe runState.pointee.io
            let size = Int(io.size), count = Int(io.count)
            if io.direction == UInt8(KVM_EXIT_IO_OUT) {
                let data = unsafe [UInt8](UnsafeRawBufferPointer(start: runArea + Int(io.data_offset), count: size * count))
                return .ioOut(port: io.port, size: size, data: data)
            }
            return .ioIn(port: io.port, size: size, count: count)
        case KVM_EXIT_MMIO:
            let mmio = unsafe runState.pointee.mmio
            let length = Int(mmio.len)
            if mmio.is_write != 0 {
                let data = unsafe withUnsafeBytes(of: mmio.data) { unsafe Array($0.prefix(length)) }
                return .mmioWrite(address: mmio.phys_addr, data: data)
            }
            return .mmioRead(address: mmio.phys_addr, length: length)
        case KVM_EXIT_INTR: return .interrupted
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: unsafe runState.pointee.system_event.type)
        case KVM_EXIT_FAIL_ENTRY: return .failEntry(reason: unsafe runState.pointee.fail_entry.hardware_entry_failure_reason)
        case KVM_EXIT_INTERNAL_ERROR: return .internalError(suberror: unsafe runState.pointee.internal.suberror)
        default: return .unknown(reason: unsafe runState.pointee.exit_reason)
        }
    }

    /// Supplies the bytes of the pending `.ioIn` exit (size × count, extra ignored).
    public func completeIORead(_ bytes: [UInt8]) {
        let io = unsafe runState.pointee.io
        let length = min(bytes.count, Int(io.size) * Int(io.count))
        unsafe bytes.withUnsafeBytes { source in
            // SAFETY: KVM sized the data area for size × count bytes at data_offset.
            unsafe (runArea + Int(io.data_offset)).copyMemory(from: source.baseAddress!, byteCount: length)
        }
    }

    /// Supplies the bytes of the pending `.mmioRead` exit (at most 8).
    public func completeMMIORead(_ bytes: [UInt8]) {
        unsafe withUnsafeMutableBytes(of: &runState.pointee.mmio.data) { data in
            for (i, byte) in bytes.prefix(data.count).enumerated() { unsafe data[i] = byte }
        }
    }
}

extension VirtualCPU {
    /// The Linux thread id of the thread running this vCPU (0 before it runs).
    public var threadID: Int32 { threadIDStorage.withLock { $0 } }
}
