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
}
