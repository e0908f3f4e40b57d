/// What both sides must agree on before a single page moves: the RAM blocks
/// (name, size, page size) and the vCPU count.  Sent first; the destination
/// compares it with its own and refuses the stream on any difference.
public struct MigrationConfiguration: Equatable, Sendable {
    public struct Block: Equatable, Sendable {
        public let name: String
        public let byteCount: UInt64
        public let pageSize: UInt32

        public init(name: String, byteCount: UInt64, pageSize: UInt32) {
            self.name = name
            self.byteCount = byteCount
            self.pageSize = pageSize
        }

        public var pageCount: UInt64 { byteCount / UInt64(pageSize) }
    }

    /// Bounds on what a stream may declare, so a hostile one cannot make us allocate much.
    public static let maximumBlocks = 256
    public static let maximumVCPUs: UInt32 = 1024
    /// The largest RAM block a stream may describe (64 TiB, as a mapped-ram
    /// file's header allows): past it, counts derived from the size (pages,
    /// bitmap units) could overflow where nothing local bounds them (`ferry analyze`).
    public static let maximumBlockBytes: UInt64 = 1 << 46

    public let blocks: [Block]
    public let vcpuCount: UInt32

    public init(blocks: [Block], vcpuCount: UInt32) {
        self.blocks = blocks
        self.vcpuCount = vcpuCount
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u32(vcpuCount)
        w.u16(UInt16(blocks.count))
        for block in blocks {
            w.string(block.name)
            w.u64(block.byteCount)
            w.u32(block.pageSize)
        }
        return w.bytes
    }

    public init(decoding payload: [UInt8]) throws(ProtocolError) {
        var r = WireReader(payload)
        let vcpus = try r.u32("vCPU count")
        guard vcpus >= 1 && vcpus <= Self.maximumVCPUs else { throw .malformed("vCPU count \(vcpus)") }
        let count = Int(try r.u16("block count"))
        guard count >= 1 && count <= Self.maximumBlocks else { throw .malformed("block count \(count)") }
        var blocks: [Block] = []
        for index in 0..<count {
            let name = try r.string("block \(index) name")
            let bytes = try r.u64("block \(index) size")
            let pageSize = try r.u32("block \(index) page size")
            guard pageSize >= 4096, pageSize & (pageSize - 1) == 0, bytes > 0, bytes % UInt64(pageSize) == 0,
                  bytes <= Self.maximumBlockBytes else {
                throw .malformed("block '\(name)' has size \(bytes) and page size \(pageSize)")
            }
            blocks.append(Block(name: name, byteCount: bytes, pageSize: pageSize))
        }
        guard r.isAtEnd else { throw .malformed("\(r.remaining) extra bytes after the configuration") }
        self.init(blocks: blocks, vcpuCount: vcpus)
    }

    /// Throws unless `incoming` (the source's) matches this (the destination's) exactly.
    public func check(incoming: MigrationConfiguration) throws(ProtocolError) {
        guard incoming.vcpuCount == vcpuCount else {
            throw .configurationMismatch("source has \(incoming.vcpuCount) vCPUs, destination \(vcpuCount)")
        }
        guard incoming.blocks.map(\.name) == blocks.map(\.name) else {
            throw .configurationMismatch("source RAM blocks \(incoming.blocks.map(\.name)), destination \(blocks.map(\.name))")
        }
        for (theirs, ours) in zip(incoming.blocks, blocks) {
            guard theirs.byteCount == ours.byteCount else {
                throw .configurationMismatch("RAM block '\(ours.name)' is \(theirs.byteCount) bytes on the source, \(ours.byteCount) here")
            }
            guard theirs.pageSize == ours.pageSize else {
                throw .configurationMismatch("RAM block '\(ours.name)' has \(theirs.pageSize)-byte pages on the source, \(ours.pageSize) here")
            }
        }
    }
}
