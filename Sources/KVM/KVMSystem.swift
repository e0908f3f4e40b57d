import CLinuxUAPI

/// `/dev/kvm`: the system scope of KVM's ioctls.  Closes its descriptor on deinit.
public final class KVMSystem: Sendable {
    let descriptor: Int32
    public static let devicePath = "/dev/kvm"

    public init() throws(KVMError) {
        descriptor = try Ioctl.open(Self.devicePath)
        let version = try Ioctl.value(descriptor, .getAPIVersion)
        guard version == 12 else { throw .unsupportedAPIVersion(version) }
    }

    deinit { Ioctl.closeDescriptor(descriptor) }

    /// Whether this host has a usable /dev/kvm (for tests that need it).
    public static var isUsable: Bool { (try? KVMSystem()) != nil }

    /// Corresponds to `KVM_CHECK_EXTENSION`: 0 when absent, else a capability-specific value.
    public func checkExtension(_ capability: Int32) -> Int32 {
        (try? Ioctl.value(descriptor, .checkExtension, UInt(capability))) ?? 0
    }

    /// Corresponds to `KVM_CREATE_VM`.
    public func makeVirtualMachine() throws(KVMError) -> VirtualMachine {
        let fd = try Ioctl.value(descriptor, .createVM, 0)
        let runSize = try Ioctl.value(descriptor, .getVCPUMmapSize)
        return VirtualMachine(descriptor: fd, system: self, runAreaSize: Int(runSize))
    }

    /// Corresponds to `KVM_GET_SUPPORTED_CPUID`.
    public func supportedCPUID() throws(KVMError) -> CPUIDTable {
        var table = CLinuxUAPI_cpuid()
        table.header.nent = UInt32(CLINUXUAPI_MAX_CPUID_ENTRIES)
        try Ioctl.pointer(descriptor, .getSupportedCPUID, &table)
        return CPUIDTable(raw: table)
    }
}
