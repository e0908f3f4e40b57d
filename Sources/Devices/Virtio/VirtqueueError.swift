import GuestMemory

/// Why a virtqueue cannot be used: the driver broke the split-ring rules, or
/// pointed somewhere that is not guest RAM.  The device then stops and sets
/// DEVICE_NEEDS_RESET, as virtio 1.x (2.1.2) asks of a device in an
/// unrecoverable state; nothing is read or written outside RAM.
public enum VirtqueueError: Error, Equatable, Sendable, CustomStringConvertible {
    case sizeInvalid(queue: Int, size: UInt32)
    case ringOutsideRAM(queue: Int, part: String, address: UInt64)
    case ringMisaligned(queue: Int, part: String, address: UInt64)
    case availableIndexAhead(queue: Int, available: UInt16, consumed: UInt16, size: UInt16)
    case headOutOfRange(queue: Int, head: UInt16)
    case nextOutOfRange(queue: Int, next: UInt16)
    case chainTooLong(queue: Int, head: UInt16)
    case indirectNotNegotiated(queue: Int, head: UInt16)
    case bufferOutsideRAM(queue: Int, address: UInt64, length: UInt32)
    case readableAfterWritable(queue: Int, head: UInt16)
    case badBuffer(queue: Int, reason: String)

    public var description: String {
        switch self {
        case .sizeInvalid(let q, let size): "queue \(q): size \(size) is not a power of two up to the maximum"
        case .ringOutsideRAM(let q, let part, let address): "queue \(q): the \(part) at 0x\(String(address, radix: 16)) is not in guest RAM"
        case .ringMisaligned(let q, let part, let address): "queue \(q): the \(part) at 0x\(String(address, radix: 16)) is misaligned"
        case .availableIndexAhead(let q, let available, let consumed, let size):
            "queue \(q): the available index \(available) is more than \(size) entries past \(consumed)"
        case .headOutOfRange(let q, let head): "queue \(q): descriptor head \(head) is past the table"
        case .nextOutOfRange(let q, let next): "queue \(q): descriptor next \(next) is past the table"
        case .chainTooLong(let q, let head): "queue \(q): the chain from descriptor \(head) is longer than the table (a loop)"
        case .indirectNotNegotiated(let q, let head): "queue \(q): descriptor \(head) is indirect, which was not negotiated"
        case .bufferOutsideRAM(let q, let address, let length):
            "queue \(q): a buffer of \(length) bytes at 0x\(String(address, radix: 16)) is not in guest RAM"
        case .readableAfterWritable(let q, let head): "queue \(q): the chain from \(head) has a readable buffer after a writable one"
        case .badBuffer(let q, let reason): "queue \(q): \(reason)"
        }
    }
}
