import SystemPackage

/// Failures of the KVM layer: the operation and what the kernel said.
public enum KVMError: Error, Equatable, Sendable, CustomStringConvertible {
    case open(String, Errno)
    case ioctl(IoctlRequest, Errno)
    case unsupportedAPIVersion(Int32)
    case missingCapability(String)
    case mmapRun(Errno)
    case unknownSlot(UInt32)
    /// `KVM_GET_MSR_INDEX_LIST` lacks MSRs every x86-64 KVM lists.
    case msrIndexListLacks([UInt32])
    /// `KVM_GET_MSRS` stopped at this MSR: KVM listed it but cannot read it.
    case msrNotReadable(UInt32)

    public var description: String {
        switch self {
        case .open(let path, let errno): "cannot open \(path): \(errno)"
        case .ioctl(let request, let errno): "\(request) failed: \(errno)"
        case .unsupportedAPIVersion(let version): "KVM API version \(version) is not 12"
        case .missingCapability(let name): "KVM lacks \(name)"
        case .mmapRun(let errno): "cannot map the vCPU's kvm_run area: \(errno)"
        case .unknownSlot(let slot): "memory slot \(slot) was never mapped"
        case .msrIndexListLacks(let missing):
            "KVM_GET_MSR_INDEX_LIST lacks required MSRs \(missing.map(hex).joined(separator: ", ")): the vCPU state would be incomplete"
        case .msrNotReadable(let index): "KVM_GET_MSRS cannot read MSR \(hex(index)), which KVM_GET_MSR_INDEX_LIST lists"
        }
    }
}
