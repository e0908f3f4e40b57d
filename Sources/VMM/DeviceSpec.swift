/// A device `--device` (or QEMU's `-device`) adds: `virtio-balloon[,free-page-hint=on|off]`.
/// QEMU's `virtio-balloon-device` (the virtio-mmio flavour) is accepted as the same device.
public enum DeviceSpec: Equatable, Sendable, CustomStringConvertible {
    case virtioBalloon(freePageHint: Bool)

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    public init(parsing text: String) throws(ParseError) {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let name = items.first, ["virtio-balloon", "virtio-balloon-device"].contains(name) else {
            throw ParseError(description: "unknown device '\(items.first ?? "")' (Ferry has: virtio-balloon)")
        }
        var freePageHint = false
        for item in items.dropFirst() {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, parts[0] == "free-page-hint" else {
                throw ParseError(description: "virtio-balloon: unknown property '\(parts.first ?? item)' (expected free-page-hint=on|off)")
            }
            guard let flag = ["on": true, "off": false, "true": true, "false": false][parts[1]] else {
                throw ParseError(description: "virtio-balloon: free-page-hint takes on or off, not '\(parts[1])'")
            }
            freePageHint = flag
        }
        self = .virtioBalloon(freePageHint: freePageHint)
    }

    public var description: String {
        switch self {
        case .virtioBalloon(let hint): "virtio-balloon" + (hint ? ",free-page-hint=on" : "")
        }
    }
}

/// Where virtio-mmio transports sit, as QEMU's microvm lays them out: 512-byte
/// windows from 0xfeb00000, interrupt lines from 5 (microvm without ACPI's
/// second IOAPIC).  The guest learns them from the kernel command line,
/// `virtio_mmio.device=512@0xfeb00000:5`, the way microvm announces them.
public enum VirtioMMIOLayout {
    public static let base: UInt64 = 0xfeb0_0000
    public static let windowSize: UInt64 = 0x200
    public static let firstIRQ: UInt32 = 5

    public static func address(slot: Int) -> UInt64 { base + UInt64(slot) * windowSize }
    public static func irq(slot: Int) -> UInt32 { firstIRQ + UInt32(slot) }

    /// The command-line words announcing `count` transports.
    public static func commandLine(count: Int) -> String {
        (0..<count).map { " virtio_mmio.device=\(windowSize)@0x\(String(address(slot: $0), radix: 16)):\(irq(slot: $0))" }.joined()
    }
}
