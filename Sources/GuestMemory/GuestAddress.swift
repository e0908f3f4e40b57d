/// A guest physical address. There is no `+`: arithmetic is checked and spelled out.
public struct GuestAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "gpa:0x" + String(rawValue, radix: 16) }

    /// The address `byteCount` above this one, or `nil` on overflow.
    public func advanced(by byteCount: UInt64) -> GuestAddress? {
        let (sum, overflow) = rawValue.addingReportingOverflow(byteCount)
        return overflow ? nil : GuestAddress(sum)
    }

    /// Bytes from `base` up to this address, or `nil` if this address lies below `base`.
    public func distance(from base: GuestAddress) -> UInt64? {
        rawValue >= base.rawValue ? rawValue - base.rawValue : nil
    }

    /// The page holding this address.
    public func pageIndex(pageSize: PageSize) -> GuestPageIndex {
        GuestPageIndex(rawValue: rawValue >> pageSize.shift)
    }
}

/// A guest page number: a guest physical address divided by the page size.
public struct GuestPageIndex: RawRepresentable, Hashable, Comparable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public func address(pageSize: PageSize) -> GuestAddress { GuestAddress(rawValue << pageSize.shift) }
}

/// `[start, start + byteCount)` in guest physical space; never wraps.
public struct GuestRange: Hashable, Sendable, CustomStringConvertible {
    public let start: GuestAddress
    public let byteCount: UInt64

    /// Fails when the range would wrap past the top of the address space.
    public init?(start: GuestAddress, byteCount: UInt64) {
        guard start.advanced(by: byteCount) != nil else { return nil }
        self.start = start
        self.byteCount = byteCount
    }

    public var end: GuestAddress { GuestAddress(start.rawValue + byteCount) }
    public func contains(_ address: GuestAddress) -> Bool { address >= start && address < end }

    /// Whether `[address, address + length)` lies wholly inside this range.
    public func contains(_ address: GuestAddress, length: UInt64) -> Bool {
        guard let offset = address.distance(from: start), offset <= byteCount else { return false }
        return length <= byteCount - offset
    }

    public var description: String {
        "[0x\(String(start.rawValue, radix: 16)), 0x\(String(end.rawValue, radix: 16)))"
    }
}

/// A page size: a power of two, at least 4 KiB.
public struct PageSize: Hashable, Sendable, CustomStringConvertible {
    public let byteCount: Int
    public init?(byteCount: Int) {
        guard byteCount >= 4096, byteCount & (byteCount - 1) == 0 else { return nil }
        self.byteCount = byteCount
    }
    public static let base = PageSize(byteCount: 4096)!
    public static let huge2M = PageSize(byteCount: 2 << 20)!
    public var shift: UInt64 { UInt64(byteCount.trailingZeroBitCount) }
    public var description: String {
        byteCount >= 1 << 20 ? "\(byteCount >> 20) MiB" : "\(byteCount >> 10) KiB"
    }
}
