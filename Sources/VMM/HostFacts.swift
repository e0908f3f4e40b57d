import KVM

/// Facts about this host's KVM, for tools that prepare guests for other VMMs.
public enum HostFacts {
    /// The TSC frequency KVM gives a new vCPU (`KVM_GET_TSC_KHZ`), which QEMU's vCPUs get too.
    public static func guestTSCKHz() throws(MachineError) -> UInt32 {
        do {
            let vm = try KVMSystem().makeVirtualMachine()
            return try vm.makeVCPU(VCPUIndex(0)).tscKHz()
        } catch { throw .kvm(error) }
    }
}
