import GuestMemory
import KVM
import PVHBoot

/// Why a machine could not be built or run.
public enum MachineError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidCPUCount(Int)
    case memoryTooSmall(UInt64, minimum: UInt64)
    case memoryTooLarge(UInt64, host: UInt64)
    case memory(GuestMemoryError)
    case kvm(KVMError)
    case boot(PVHError)
    case invalidState(String)

    public var description: String {
        switch self {
        case .invalidCPUCount(let count): "--cpus must be between \(MachineConfiguration.cpuRange.lowerBound) and \(MachineConfiguration.cpuRange.upperBound), not \(count)"
        case .memoryTooSmall(let bytes, let minimum): "guest memory of \(bytes) bytes is below the minimum of \(minimum >> 20) MiB"
        case .memoryTooLarge(let bytes, let host): "guest memory of \(bytes) bytes exceeds the limit of \(host) bytes"
        case .memory(let error): error.description
        case .kvm(let error): error.description
        case .boot(let error): "cannot boot kernel: \(error)"
        case .invalidState(let why): why
        }
    }
}
