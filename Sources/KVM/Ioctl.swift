import CLinuxUAPI
import Glibc
import SystemPackage

/// A KVM ioctl request: the kernel's name (for errors and traces) and its number.
public struct IoctlRequest: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    let number: UInt

    public var description: String { name }

    static let getAPIVersion = IoctlRequest(name: "KVM_GET_API_VERSION", number: CLinuxUAPI_KVM_GET_API_VERSION)
    static let createVM = IoctlRequest(name: "KVM_CREATE_VM", number: CLinuxUAPI_KVM_CREATE_VM)
    static let checkExtension = IoctlRequest(name: "KVM_CHECK_EXTENSION", number: CLinuxUAPI_KVM_CHECK_EXTENSION)
    static let getVCPUMmapSize = IoctlRequest(name: "KVM_GET_VCPU_MMAP_SIZE", number: CLinuxUAPI_KVM_GET_VCPU_MMAP_SIZE)
    static let getSupportedCPUID = IoctlRequest(name: "KVM_GET_SUPPORTED_CPUID", number: CLinuxUAPI_KVM_GET_SUPPORTED_CPUID)
    static let createIRQChip = IoctlRequest(name: "KVM_CREATE_IRQCHIP", number: CLinuxUAPI_KVM_CREATE_IRQCHIP)
    static let createPIT2 = IoctlRequest(name: "KVM_CREATE_PIT2", number: CLinuxUAPI_KVM_CREATE_PIT2)
    static let setUserMemoryRegion = IoctlRequest(name: "KVM_SET_USER_MEMORY_REGION", number: CLinuxUAPI_KVM_SET_USER_MEMORY_REGION)
    static let createVCPU = IoctlRequest(name: "KVM_CREATE_VCPU", number: CLinuxUAPI_KVM_CREATE_VCPU)
    static let irqLine = IoctlRequest(name: "KVM_IRQ_LINE", number: CLinuxUAPI_KVM_IRQ_LINE)
    static let setTSSAddress = IoctlRequest(name: "KVM_SET_TSS_ADDR", number: CLinuxUAPI_KVM_SET_TSS_ADDR)
    static let setIdentityMapAddress = IoctlRequest(name: "KVM_SET_IDENTITY_MAP_ADDR", number: CLinuxUAPI_KVM_SET_IDENTITY_MAP_ADDR)
    static let run = IoctlRequest(name: "KVM_RUN", number: CLinuxUAPI_KVM_RUN)
    static let getRegs = IoctlRequest(name: "KVM_GET_REGS", number: CLinuxUAPI_KVM_GET_REGS)
    static let setRegs = IoctlRequest(name: "KVM_SET_REGS", number: CLinuxUAPI_KVM_SET_REGS)
    static let getSregs = IoctlRequest(name: "KVM_GET_SREGS", number: CLinuxUAPI_KVM_GET_SREGS)
    static let setSregs = IoctlRequest(name: "KVM_SET_SREGS", number: CLinuxUAPI_KVM_SET_SREGS)
    static let setCPUID2 = IoctlRequest(name: "KVM_SET_CPUID2", number: CLinuxUAPI_KVM_SET_CPUID2)
    static let getDirtyLog = IoctlRequest(name: "KVM_GET_DIRTY_LOG", number: CLinuxUAPI_KVM_GET_DIRTY_LOG)
    static let clearDirtyLog = IoctlRequest(name: "KVM_CLEAR_DIRTY_LOG", number: CLinuxUAPI_KVM_CLEAR_DIRTY_LOG)
    static let enableCap = IoctlRequest(name: "KVM_ENABLE_CAP", number: CLinuxUAPI_KVM_ENABLE_CAP)
    static let setMPState = IoctlRequest(name: "KVM_SET_MP_STATE", number: CLinuxUAPI_KVM_SET_MP_STATE)
    static let getTSCKHz = IoctlRequest(name: "KVM_GET_TSC_KHZ", number: CLinuxUAPI_KVM_GET_TSC_KHZ)
    static let getMSRIndexList = IoctlRequest(name: "KVM_GET_MSR_INDEX_LIST", number: CLinuxUAPI_KVM_GET_MSR_INDEX_LIST)
    static let getIRQChip = IoctlRequest(name: "KVM_GET_IRQCHIP", number: CLinuxUAPI_KVM_GET_IRQCHIP)
    static let setIRQChip = IoctlRequest(name: "KVM_SET_IRQCHIP", number: CLinuxUAPI_KVM_SET_IRQCHIP)
    static let getPIT2 = IoctlRequest(name: "KVM_GET_PIT2", number: CLinuxUAPI_KVM_GET_PIT2)
    static let setPIT2 = IoctlRequest(name: "KVM_SET_PIT2", number: CLinuxUAPI_KVM_SET_PIT2)
    static let getClock = IoctlRequest(name: "KVM_GET_CLOCK", number: CLinuxUAPI_KVM_GET_CLOCK)
    static let setClock = IoctlRequest(name: "KVM_SET_CLOCK", number: CLinuxUAPI_KVM_SET_CLOCK)
    static let setTSCKHz = IoctlRequest(name: "KVM_SET_TSC_KHZ", number: CLinuxUAPI_KVM_SET_TSC_KHZ)
    static let getMPState = IoctlRequest(name: "KVM_GET_MP_STATE", number: CLinuxUAPI_KVM_GET_MP_STATE)
    static let getXSave = IoctlRequest(name: "KVM_GET_XSAVE", number: CLinuxUAPI_KVM_GET_XSAVE)
    static let setXSave = IoctlRequest(name: "KVM_SET_XSAVE", number: CLinuxUAPI_KVM_SET_XSAVE)
    static let getXCRs = IoctlRequest(name: "KVM_GET_XCRS", number: CLinuxUAPI_KVM_GET_XCRS)
    static let setXCRs = IoctlRequest(name: "KVM_SET_XCRS", number: CLinuxUAPI_KVM_SET_XCRS)
    static let getMSRs = IoctlRequest(name: "KVM_GET_MSRS", number: CLinuxUAPI_KVM_GET_MSRS)
    static let setMSRs = IoctlRequest(name: "KVM_SET_MSRS", number: CLinuxUAPI_KVM_SET_MSRS)
    static let getLAPIC = IoctlRequest(name: "KVM_GET_LAPIC", number: CLinuxUAPI_KVM_GET_LAPIC)
    static let setLAPIC = IoctlRequest(name: "KVM_SET_LAPIC", number: CLinuxUAPI_KVM_SET_LAPIC)
    static let getVCPUEvents = IoctlRequest(name: "KVM_GET_VCPU_EVENTS", number: CLinuxUAPI_KVM_GET_VCPU_EVENTS)
    static let setVCPUEvents = IoctlRequest(name: "KVM_SET_VCPU_EVENTS", number: CLinuxUAPI_KVM_SET_VCPU_EVENTS)
    static let getDebugRegs = IoctlRequest(name: "KVM_GET_DEBUGREGS", number: CLinuxUAPI_KVM_GET_DEBUGREGS)
    static let setDebugRegs = IoctlRequest(name: "KVM_SET_DEBUGREGS", number: CLinuxUAPI_KVM_SET_DEBUGREGS)
}

/// The KVM module's only caller of ioctl(2).  EINTR is retried in the shim
/// except for KVM_RUN, where it means "kicked".
enum Ioctl {
    @discardableResult
    static func value(_ fd: Int32, _ request: IoctlRequest, _ value: UInt = 0) throws(KVMError) -> Int32 {
        let result = CLinuxUAPI_ioctl_value(fd, request.number, value)
        guard result >= 0 else { throw .ioctl(request, Errno(rawValue: Int32(-result))) }
        return Int32(result)
    }

    /// Passes a pointer to `argument`, which the kernel reads and may update.
    @discardableResult
    static func pointer<T>(_ fd: Int32, _ request: IoctlRequest, _ argument: inout T) throws(KVMError) -> Int32 {
        // SAFETY: `argument` is a value of the struct type `request` expects, live for the call.
        let result = unsafe withUnsafeMutablePointer(to: &argument) { unsafe CLinuxUAPI_ioctl_pointer(fd, request.number, $0) }
        guard result >= 0 else { throw .ioctl(request, Errno(rawValue: Int32(-result))) }
        return Int32(result)
    }

    /// KVM_RUN: `nil` when interrupted by a kick (EINTR).
    static func run(_ fd: Int32) throws(KVMError) -> Int32? {
        let result = CLinuxUAPI_ioctl_value(fd, IoctlRequest.run.number, 0)
        if result == -Int(EINTR) || result == -Int(EAGAIN) { return nil }
        guard result >= 0 else { throw .ioctl(.run, Errno(rawValue: Int32(-result))) }
        return Int32(result)
    }

    static func open(_ path: String) throws(KVMError) -> Int32 {
        let fd = unsafe CLinuxUAPI_open(path, O_RDWR)
        guard fd >= 0 else { throw .open(path, Errno(rawValue: -fd)) }
        return fd
    }

    static func mapShared(_ fd: Int32, byteCount: Int) throws(KVMError) -> UnsafeMutableRawPointer {
        let address = CLinuxUAPI_mmap(nil, byteCount, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard address > 0, let pointer = unsafe UnsafeMutableRawPointer(bitPattern: address) else {
            throw .mmapRun(Errno(rawValue: Int32(-address)))
        }
        return unsafe pointer
    }

    static func unmap(_ pointer: UnsafeMutableRawPointer, byteCount: Int) {
        _ = unsafe munmap(pointer, byteCount)
    }

    static func closeDescriptor(_ fd: Int32) { _ = close(fd) }

    static func installKickSignal(_ signal: Int32) { _ = CLinuxUAPI_install_kick_signal(signal) }

    static func kick(_ thread: pthread_t, signal: Int32) { _ = CLinuxUAPI_kick_thread(thread, signal) }

    static func currentThread() -> pthread_t { pthread_self() }

    static func currentThreadID() -> Int32 { CLinuxUAPI_gettid() }
}

extension Ioctl {
    /// KVM_GET_DIRTY_LOG into `words` (sized by the caller for the slot).
    static func getDirtyLog(_ vm: Int32, slot: UInt32, into words: inout [UInt64]) throws(KVMError) {
        // SAFETY: `words` holds ceil(pages / 64) words, what KVM writes for this slot.
        let result = unsafe words.withUnsafeMutableBufferPointer { unsafe CLinuxUAPI_get_dirty_log(vm, slot, $0.baseAddress) }
        guard result >= 0 else { throw .ioctl(.getDirtyLog, Errno(rawValue: Int32(-result))) }
    }

    /// KVM_CLEAR_DIRTY_LOG of the pages set in `words`, which covers `pageCount` pages from
    /// `firstPage` of the slot (a multiple of 64; `pageCount` too, unless it reaches the slot's end).
    static func clearDirtyLog(_ vm: Int32, slot: UInt32, firstPage: Int = 0, pageCount: Int, words: inout [UInt64]) throws(KVMError) {
        precondition(firstPage >= 0 && firstPage % 64 == 0 && words.count * 64 >= pageCount)
        // SAFETY: `words` covers `pageCount` pages; KVM only reads it.
        let result = unsafe words.withUnsafeMutableBufferPointer {
            unsafe CLinuxUAPI_clear_dirty_log(vm, slot, UInt64(firstPage), UInt32(pageCount), $0.baseAddress)
        }
        guard result >= 0 else { throw .ioctl(.clearDirtyLog, Errno(rawValue: Int32(-result))) }
    }

    /// KVM_ENABLE_CAP on the VM with one argument.
    static func enableCapability(_ vm: Int32, _ capability: UInt32, argument: UInt64) throws(KVMError) {
        var cap = kvm_enable_cap()
        cap.cap = capability
        cap.args.0 = argument
        try pointer(vm, .enableCap, &cap)
    }
}

extension Ioctl {
    /// The bytes of a plain C struct, for migration.
    static func bytes<T>(of value: T) -> [UInt8] {
        // SAFETY: T is a kernel UAPI struct without pointers; its bytes are its state.
        unsafe withUnsafeBytes(of: value) { unsafe Array($0) }
    }

    /// Runs a `KVM_GET_*` ioctl that fills a `T` and returns the struct's bytes.
    static func read<T>(_ fd: Int32, _ request: IoctlRequest, _ zero: T) throws(KVMError) -> [UInt8] {
        var value = zero
        try pointer(fd, request, &value)
        return bytes(of: value)
    }

    /// A plain C struct from exactly `MemoryLayout<T>.size` bytes; `nil` for any other count.
    static func value<T>(_ type: T.Type, from bytes: [UInt8], zero: T) -> T? {
        guard bytes.count == MemoryLayout<T>.size else { return nil }
        var value = zero
        // SAFETY: sizes match and T has no pointers, so any byte pattern is a valid T.
        unsafe withUnsafeMutableBytes(of: &value) { target in
            unsafe bytes.withUnsafeBytes { unsafe target.copyMemory(from: $0) }
        }
        return value
    }
}
