/// The virtio-mmio version 2 register file (virtio 1.x, section 4.2.2): offsets
/// from the transport's base.  Registers are 32 bits wide; device-specific
/// configuration starts at `config`.
enum VirtioMMIORegister: UInt64 {
    case magicValue = 0x000
    case version = 0x004
    case deviceID = 0x008
    case vendorID = 0x00c
    case deviceFeatures = 0x010
    case deviceFeaturesSelect = 0x014
    case driverFeatures = 0x020
    case driverFeaturesSelect = 0x024
    case queueSelect = 0x030
    case queueSizeMax = 0x034
    case queueSize = 0x038
    case queueReady = 0x044
    case queueNotify = 0x050
    case interruptStatus = 0x060
    case interruptAcknowledge = 0x064
    case status = 0x070
    case queueDescriptorLow = 0x080
    case queueDescriptorHigh = 0x084
    case queueDriverLow = 0x090
    case queueDriverHigh = 0x094
    case queueDeviceLow = 0x0a0
    case queueDeviceHigh = 0x0a4
    case configGeneration = 0x0fc

    static let config: UInt64 = 0x100
    /// "virt", little-endian.
    static let magic: UInt32 = 0x7472_6976
    /// What QEMU's virtio-mmio reports ("QEMU"); the same driver then sees the same device under both.
    static let vendor: UInt32 = 0x554d_4551
}

/// The device status field (virtio 1.x, 2.1).
public struct VirtioStatus: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let acknowledge = VirtioStatus(rawValue: 1)
    public static let driver = VirtioStatus(rawValue: 2)
    public static let driverOK = VirtioStatus(rawValue: 4)
    public static let featuresOK = VirtioStatus(rawValue: 8)
    public static let deviceNeedsReset = VirtioStatus(rawValue: 64)
    public static let failed = VirtioStatus(rawValue: 128)
}

/// Feature bits every virtio device shares.
public enum VirtioFeature {
    /// Bit 32: a virtio 1.x (modern) device; a version 2 transport requires it.
    public static let version1: UInt64 = 1 << 32
}

/// InterruptStatus bits.
enum VirtioInterrupt {
    static let usedBuffer: UInt32 = 1
    static let configChange: UInt32 = 2
}
