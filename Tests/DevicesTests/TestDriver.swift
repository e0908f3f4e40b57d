import Devices
import GuestMemory
import Synchronization

/// A virtio-mmio driver written in the test, over real guest memory: it
/// negotiates, lays out split rings at fixed addresses and adds buffers the
/// way a guest driver does, so every test drives the device through its
/// registers alone (and a hostile test can then break any rule it likes).
struct TestDriver {
    let transport: any MMIODevice
    let memory: GuestMemoryMap
    /// Queue q: descriptors at 0x10000 + q * 0x4000, available ring +0x1000, used ring +0x2000.
    static func rings(_ q: Int) -> (desc: UInt64, avail: UInt64, used: UInt64) {
        let base = UInt64(0x10000 + q * 0x4000)
        return (base, base + 0x1000, base + 0x2000)
    }
    var availableIndex: [UInt16] = [0, 0, 0, 0]
    var nextDescriptor: [UInt16] = [0, 0, 0, 0]
    var size: UInt32 = 16

    init(_ transport: any MMIODevice, memory: GuestMemoryMap) {
        self.transport = transport
        self.memory = memory
    }

    func read32(_ offset: UInt64) -> UInt32 {
        transport.read(offset: offset, count: 4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }
    func write32(_ offset: UInt64, _ value: UInt32) {
        transport.write(offset: offset, bytes: (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) })
    }

    var status: UInt32 { read32(0x70) }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; true if the device kept FEATURES_OK.
    func negotiate(_ features: UInt64) -> Bool {
        write32(0x70, 0)
        write32(0x70, 1)
        write32(0x70, 3)
        for sel: UInt32 in 0...1 {
            write32(0x24, sel)
            write32(0x20, UInt32(truncatingIfNeeded: features >> (32 * UInt64(sel))))
        }
        write32(0x70, 11)
        return status & 8 != 0
    }

    func offered() -> UInt64 {
        var features: UInt64 = 0
        for sel: UInt32 in 0...1 {
            write32(0x14, sel)
            features |= UInt64(read32(0x10)) << (32 * UInt64(sel))
        }
        return features
    }

    func setUpQueue(_ q: Int, size: UInt32 = 16, desc: UInt64? = nil) {
        let r = Self.rings(q)
        write32(0x30, UInt32(q))
        write32(0x38, size)
        write32(0x80, UInt32(truncatingIfNeeded: desc ?? r.desc)); write32(0x84, UInt32(truncatingIfNeeded: (desc ?? r.desc) >> 32))
        write32(0x90, UInt32(truncatingIfNeeded: r.avail)); write32(0x94, 0)
        write32(0xa0, UInt32(truncatingIfNeeded: r.used)); write32(0xa4, 0)
        write32(0x44, 1)
    }

    func driverOK() { write32(0x70, 15) }

    func writeDescriptor(_ q: Int, _ index: UInt16, address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) throws {
        var bytes: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: address >> (8 * $0)) }
        bytes += (0..<4).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }
        bytes += [UInt8(truncatingIfNeeded: flags), UInt8(flags >> 8), UInt8(truncatingIfNeeded: next), UInt8(next >> 8)]
        try memory.write(bytes, at: GuestAddress(Self.rings(q).desc + 16 * UInt64(index)))
    }

    /// Makes `head` available on queue q (ring entry, then index), without notifying.
    mutating func makeAvailable(_ q: Int, head: UInt16) throws {
        let r = Self.rings(q)
        let slot = UInt64(availableIndex[q] % UInt16(size))
        try memory.write([UInt8(truncatingIfNeeded: head), UInt8(head >> 8)], at: GuestAddress(r.avail + 4 + 2 * slot))
        availableIndex[q] &+= 1
        try setAvailableIndex(q, availableIndex[q])
    }

    func setAvailableIndex(_ q: Int, _ value: UInt16) throws {
        try memory.write([UInt8(truncatingIfNeeded: value), UInt8(value >> 8)], at: GuestAddress(Self.rings(q).avail + 2))
    }

    /// One buffer as a one-descriptor chain, made available and notified.
    mutating func send(_ q: Int, address: UInt64, length: UInt32, deviceWrites: Bool = false) throws {
        let index = nextDescriptor[q] % UInt16(size)
        nextDescriptor[q] &+= 1
        try writeDescriptor(q, index, address: address, length: length, flags: deviceWrites ? 2 : 0)
        try makeAvailable(q, head: index)
        notify(q)
    }

    func notify(_ q: Int) { write32(0x50, UInt32(q)) }

    func usedIndex(_ q: Int) throws -> UInt16 {
        let bytes = try memory.read(at: GuestAddress(Self.rings(q).used + 2), count: 2)
        return UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    }

    func config32(_ offset: UInt64) -> UInt32 { read32(0x100 + offset) }
}

/// What the balloon asked of its host, recorded.
final class HostLog: Sendable {
    let discarded = Mutex<[GuestRange]>([])
    let actual = Mutex<[UInt64]>([])
    let interrupts = Mutex<[Bool]>([])

    var host: BalloonHost {
        BalloonHost(discard: { range in self.discarded.withLock { $0.append(range) } },
                    actualChanged: { bytes in self.actual.withLock { $0.append(bytes) } })
    }
}
