/// A named piece of guest RAM with one host mapping, placed at one or more
/// guest physical ranges (QEMU's `RAMBlock`; "pc.ram" is split around the
/// 32-bit MMIO hole).
public final class RAMBlock: Sendable {
    /// One guest physical range of this block and where it starts in the block.
    public struct Placement: Hashable, Sendable {
        public let guestRange: GuestRange
        public let blockOffset: UInt64
    }

    public let name: String
    public let mapping: HostMapping
    public let placements: [Placement]

    public var byteCount: UInt64 { UInt64(mapping.byteCount) }
    public var pageSize: PageSize { mapping.backend.pageSize }

    public init(name: String, mapping: HostMapping, placements: [Placement]) {
        self.name = name
        self.mapping = mapping
        self.placements = placements
    }
}
