/// A device the guest reaches through a range of guest physical addresses.
/// Offsets are from the start of its range; an access never crosses its end.
public protocol MMIODevice: AnyObject, Sendable {
    func read(offset: UInt64, count: Int) -> [UInt8]
    func write(offset: UInt64, bytes: [UInt8])
}

/// A device the guest reaches through I/O ports.  `port` is absolute; an
/// exit carries one or more accesses (`rep ins`/`outs`) of `size` bytes (1, 2
/// or 4) each, all at `port`: `count` or `bytes.count` is their sum.
public protocol PortDevice: AnyObject, Sendable {
    func read(port: UInt16, size: Int, count: Int) -> [UInt8]
    func write(port: UInt16, size: Int, bytes: [UInt8])
}

/// Where MMIO and port exits go: devices by address range.  Built once with
/// the machine (ranges may not overlap); an access nothing claims reads as all
/// ones and its writes are dropped, as on a PC's floating bus.
public struct DeviceBus: Sendable {
    public struct MMIOEntry: Sendable {
        public let base: UInt64
        public let size: UInt64
        public let device: any MMIODevice
    }
    public struct PortEntry: Sendable {
        public let ports: ClosedRange<UInt16>
        public let device: any PortDevice
    }

    public private(set) var mmio: [MMIOEntry] = []
    public private(set) var ports: [PortEntry] = []

    public enum Conflict: Error, Equatable, CustomStringConvertible {
        case mmio(base: UInt64, size: UInt64), ports(ClosedRange<UInt16>)
        public var description: String {
            switch self {
            case .mmio(let base, let size): "MMIO range 0x\(String(base, radix: 16))+0x\(String(size, radix: 16)) overlaps another device or wraps"
            case .ports(let range): "ports 0x\(String(range.lowerBound, radix: 16))-0x\(String(range.upperBound, radix: 16)) overlap another device"
            }
        }
    }

    public init() {}

    public mutating func attach(_ device: any MMIODevice, base: UInt64, size: UInt64) throws(Conflict) {
        guard size > 0, base.addingReportingOverflow(size).overflow == false,
              !mmio.contains(where: { base < $0.base + $0.size && $0.base < base + size }) else { throw .mmio(base: base, size: size) }
        mmio.append(MMIOEntry(base: base, size: size, device: device))
    }

    public mutating func attach(_ device: any PortDevice, ports range: ClosedRange<UInt16>) throws(Conflict) {
        guard !ports.contains(where: { $0.ports.overlaps(range) }) else { throw .ports(range) }
        ports.append(PortEntry(ports: range, device: device))
    }

    /// The device holding `[address, address + count)` and the offset in its range.
    func mmioDevice(at address: UInt64, count: Int) -> (any MMIODevice, UInt64)? {
        for entry in mmio where address >= entry.base && address - entry.base < entry.size {
            let offset = address - entry.base
            guard UInt64(count) <= entry.size - offset else { return nil }
            return (entry.device, offset)
        }
        return nil
    }

    public func mmioRead(address: UInt64, count: Int) -> [UInt8] {
        guard let (device, offset) = mmioDevice(at: address, count: count) else { return [UInt8](repeating: 0xff, count: count) }
        return device.read(offset: offset, count: count)
    }

    public func mmioWrite(address: UInt64, bytes: [UInt8]) {
        guard let (device, offset) = mmioDevice(at: address, count: bytes.count) else { return }
        device.write(offset: offset, bytes: bytes)
    }

    public func portRead(_ port: UInt16, size: Int, count: Int) -> [UInt8] {
        guard let entry = ports.first(where: { $0.ports.contains(port) }) else { return [UInt8](repeating: 0xff, count: count) }
        return entry.device.read(port: port, size: size, count: count)
    }

    public func portWrite(_ port: UInt16, size: Int, bytes: [UInt8]) {
        ports.first(where: { $0.ports.contains(port) })?.device.write(port: port, size: size, bytes: bytes)
    }
}
