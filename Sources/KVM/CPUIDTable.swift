import CLinuxUAPI

/// A vCPU's CPUID leaves (`kvm_cpuid2`), as KVM reports and accepts them.
public struct CPUIDTable: @unchecked Sendable {
    // @unchecked: a plain C value type with no pointers.
    var raw: CLinuxUAPI_cpuid

    public var count: Int { Int(raw.header.nent) }

    /// Sets the initial APIC ID this vCPU reports (leaf 1 EBX[31:24], leaves 0xB/0x1F EDX).
    public mutating func setAPICID(_ id: UInt32) {
        let count = count
        unsafe withUnsafeMutableBytes(of: &raw.entries) { raw in
            let entries = unsafe raw.bindMemory(to: kvm_cpuid_entry2.self)
            for i in 0..<count {
                switch unsafe entries[i].function {
                case 1: unsafe entries[i].ebx = (entries[i].ebx & 0x00ff_ffff) | (id << 24)
                case 0xb, 0x1f: unsafe entries[i].edx = id
                default: break
                }
            }
        }
    }

    /// Whether leaf `function` EDX/ECX has `bit` set (subleaf 0).
    public func hasFeature(function: UInt32, register: Register, bit: Int) -> Bool {
        var table = self
        let count = count
        return unsafe withUnsafeBytes(of: &table.raw.entries) { raw in
            let entries = unsafe raw.bindMemory(to: kvm_cpuid_entry2.self)
            for i in 0..<count where unsafe entries[i].function == function && entries[i].index == 0 {
                let entry = unsafe entries[i]
                let value = switch register {
                case .eax: entry.eax
                case .ebx: entry.ebx
                case .ecx: entry.ecx
                case .edx: entry.edx
                }
                return value & (1 << UInt32(bit)) != 0
            }
            return false
        }
    }

    public enum Register: Sendable { case eax, ebx, ecx, edx }
}
