import GuestMemory

/// One buffer chain the driver made available: the head descriptor's index,
/// then the device-readable and device-writable buffers in chain order.
public struct DescriptorChain: Equatable, Sendable {
    public let head: UInt16
    public let readable: [GuestRange]
    public let writable: [GuestRange]
}

/// A split virtqueue (virtio 1.x, 2.7): descriptor table, available ring and
/// used ring in guest memory, at the addresses the driver wrote.  Every index,
/// length and address read from the guest is checked before it is used.
///
/// The device's own position (the next available entry to take, the next used
/// entry to fill) is kept here, not re-read from the guest, and migrates with
/// the device.
public struct SplitVirtqueue: Equatable, Sendable {
    public static let maximumSize: UInt16 = 256

    let index: Int
    var size: UInt32 = UInt32(maximumSize)
    var ready = false
    var descriptorTable: UInt64 = 0
    var availableRing: UInt64 = 0
    var usedRing: UInt64 = 0
    var nextAvailable: UInt16 = 0
    var nextUsed: UInt16 = 0

    init(index: Int) { self.index = index }

    /// Back to the state after a device reset.
    mutating func reset() { self = SplitVirtqueue(index: index) }

    /// Checks the size and that every ring lies in RAM, aligned (2.7: 16, 2, 4).
    func validate(_ memory: GuestMemoryMap) throws(VirtqueueError) {
        guard size > 0, size <= UInt32(Self.maximumSize), size & (size - 1) == 0 else { throw .sizeInvalid(queue: index, size: size) }
        let parts: [(String, UInt64, UInt64, UInt64)] = [
            ("descriptor table", descriptorTable, 16 * UInt64(size), 16),
            ("available ring", availableRing, 6 + 2 * UInt64(size), 2),
            ("used ring", usedRing, 6 + 8 * UInt64(size), 4),
        ]
        for (part, address, length, alignment) in parts {
            guard address % alignment == 0 else { throw .ringMisaligned(queue: index, part: part, address: address) }
            guard (try? memory.locate(GuestAddress(address), length: length)) != nil else {
                throw .ringOutsideRAM(queue: index, part: part, address: address)
            }
        }
    }

    private func read16(_ memory: GuestMemoryMap, _ address: UInt64) throws(VirtqueueError) -> UInt16 {
        guard let bytes = try? memory.read(at: GuestAddress(address), count: 2) else {
            throw .ringOutsideRAM(queue: index, part: "ring", address: address)
        }
        return UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    }

    /// Takes the next available chain, or nil when the driver has made none available.
    mutating func pop(_ memory: GuestMemoryMap) throws(VirtqueueError) -> DescriptorChain? {
        let available = try read16(memory, availableRing + 2)
        let pending = available &- nextAvailable
        guard UInt32(pending) <= size else {
            throw .availableIndexAhead(queue: index, available: available, consumed: nextAvailable, size: UInt16(size))
        }
        guard pending > 0 else { return nil }
        let head = try read16(memory, availableRing + 4 + 2 * UInt64(nextAvailable % UInt16(size)))
        guard UInt32(head) < size else { throw .headOutOfRange(queue: index, head: head) }
        nextAvailable &+= 1
        var readable: [GuestRange] = [], writable: [GuestRange] = []
        var current = head
        for _ in 0..<size {
            guard let bytes = try? memory.read(at: GuestAddress(descriptorTable + 16 * UInt64(current)), count: 16) else {
                throw .ringOutsideRAM(queue: index, part: "descriptor table", address: descriptorTable)
            }
            let address = bytes[0..<8].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let length = bytes[8..<12].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let flags = UInt16(bytes[12]) | UInt16(bytes[13]) << 8
            let next = UInt16(bytes[14]) | UInt16(bytes[15]) << 8
            guard flags & 4 == 0 else { throw .indirectNotNegotiated(queue: index, head: head) }
            guard let range = GuestRange(start: GuestAddress(address), byteCount: UInt64(length)),
                  length == 0 || (try? memory.locate(range.start, length: range.byteCount)) != nil else {
                throw .bufferOutsideRAM(queue: index, address: address, length: length)
            }
            if flags & 2 != 0 {
                writable.append(range)
            } else {
                guard writable.isEmpty else { throw .readableAfterWritable(queue: index, head: head) }
                readable.append(range)
            }
            guard flags & 1 != 0 else { return DescriptorChain(head: head, readable: readable, writable: writable) }
            guard UInt32(next) < size else { throw .nextOutOfRange(queue: index, next: next) }
            current = next
        }
        throw .chainTooLong(queue: index, head: head)
    }

    /// Returns a chain to the driver: the used element, then the used index.
    mutating func push(head: UInt16, written: UInt32, _ memory: GuestMemoryMap) throws(VirtqueueError) {
        let slot = usedRing + 4 + 8 * UInt64(nextUsed % UInt16(size))
        let element: [UInt8] = (0..<4).map { UInt8(truncatingIfNeeded: UInt32(head) >> (8 * $0)) }
            + (0..<4).map { UInt8(truncatingIfNeeded: written >> (8 * $0)) }
        nextUsed &+= 1
        do {
            try memory.write(element, at: GuestAddress(slot))
            try memory.write([UInt8(truncatingIfNeeded: nextUsed), UInt8(truncatingIfNeeded: nextUsed >> 8)], at: GuestAddress(usedRing + 2))
        } catch { throw .ringOutsideRAM(queue: index, part: "used ring", address: usedRing) }
    }
}
