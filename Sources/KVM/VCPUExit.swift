/// Why `KVM_RUN` returned to the VMM.
public enum VCPUExit: Equatable, Sendable {
    /// The guest wrote `data` (size × count bytes, `rep outs` included) to `port`.
    case ioOut(port: UInt16, size: Int, data: [UInt8])
    /// The guest reads `size × count` bytes from `port`; answer with `completeIORead`.
    case ioIn(port: UInt16, size: Int, count: Int)
    case mmioWrite(address: UInt64, data: [UInt8])
    /// Answer with `completeMMIORead`.
    case mmioRead(address: UInt64, length: Int)
    /// The vCPU was kicked (EINTR) or `immediate_exit` was set.
    case interrupted
    case halt
    /// Triple fault or an explicit shutdown request.
    case shutdown
    case systemEvent(type: UInt32)
    case failEntry(reason: UInt64)
    case internalError(suberror: UInt32)
    case unknown(reason: UInt32)
}
