/// Little-endian encoding by shifting: no unsafe code, no Foundation.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }
    /// Direct access, for appending page bytes without an intermediate copy.
    public mutating func withBytes<R>(_ body: (inout [UInt8]) -> R) -> R { body(&bytes) }
    /// Empties the buffer, keeping its capacity.
    public mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(truncatingIfNeeded: v)); bytes.append(UInt8(truncatingIfNeeded: v >> 8)) }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    public mutating func append<C: Collection>(_ data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }
    /// A string as u16 length + UTF-8 bytes.
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count))
        bytes += utf8
    }
}

/// Bounds-checked little-endian decoding over a byte array slice.
public struct WireReader: Sendable {
    let bytes: [UInt8]
    public private(set) var index: Int
    let end: Int

    public init(_ bytes: [UInt8], range: Range<Int>? = nil) {
        self.bytes = bytes
        index = range?.lowerBound ?? 0
        end = range?.upperBound ?? bytes.count
    }

    public var remaining: Int { end - index }
    public var isAtEnd: Bool { index == end }

    mutating func take(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> Range<Int> {
        guard count >= 0, count <= remaining else { throw .truncated(field()) }
        defer { index += count }
        return index..<index + count
    }

    public mutating func u8(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt8 { bytes[try take(1, field()).lowerBound] }
    public mutating func u16(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt16 { UInt16(try value(2, field())) }
    public mutating func u32(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt32 { UInt32(try value(4, field())) }
    public mutating func u64(_ field: @autoclosure () -> String) throws(ProtocolError) -> UInt64 { try value(8, field()) }

    public mutating func bytes(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> ArraySlice<UInt8> {
        bytes[try take(count, field())]
    }

    /// The index range of the next `count` bytes, consumed.
    public mutating func range(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> Range<Int> {
        try take(count, field())
    }

    public mutating func string(_ field: String) throws(ProtocolError) -> String {
        let length = Int(try u16(field + " length"))
        let raw = try bytes(length, field)
        guard let text = String(validating: raw, as: UTF8.self) else { throw .malformed("\(field) is not UTF-8") }
        return text
    }

    private mutating func value(_ count: Int, _ field: @autoclosure () -> String) throws(ProtocolError) -> UInt64 {
        let range = try take(count, field())
        var result: UInt64 = 0
        for i in range.reversed() { result = result << 8 | UInt64(bytes[i]) }
        return result
    }
}

/// The integrity check on every frame: eight multiply lanes over 64-bit
/// little-endian words (64-byte blocks), then the tail bytes, mixed.  Catches
/// corruption, not tampering (use TLS).  Reads through a `Span`, so it is
/// bounds-checked and still runs near 10 GB/s: eight independent lanes hide
/// the multiply latency.
public enum FrameChecksum {
    public static func of(_ bytes: ArraySlice<UInt8>) -> UInt64 { of(bytes.span) }

    public static func of(_ bytes: Span<UInt8>) -> UInt64 {
        let prime: UInt64 = 0x100_0000_01b3
        var l0: UInt64 = 0xcbf2_9ce4_8422_2325, l1: UInt64 = 0x8422_2325_cbf2_9ce4
        var l2: UInt64 = 0x9e37_79b9_7f4a_7c15, l3: UInt64 = 0xc2b2_ae3d_27d4_eb4f
        var l4: UInt64 = 0x1656_67b1_9e37_79f9, l5: UInt64 = 0x27d4_eb2f_1656_67c5
        var l6: UInt64 = 0x85eb_ca77_c2b2_ae63, l7: UInt64 = 0xff51_afd7_ed55_8ccd
        var i = 0
        let blocksEnd = (bytes.count / 64) * 64
        @inline(__always) func word(_ at: Int) -> UInt64 {
            var w: UInt64 = 0
            for k in 0..<8 { w |= UInt64(bytes[at + k]) << (8 * UInt64(k)) }
            return w
        }
        while i < blocksEnd {
            l0 = (l0 ^ word(i)) &* prime
            l1 = (l1 ^ word(i + 8)) &* prime
            l2 = (l2 ^ word(i + 16)) &* prime
            l3 = (l3 ^ word(i + 24)) &* prime
            l4 = (l4 ^ word(i + 32)) &* prime
            l5 = (l5 ^ word(i + 40)) &* prime
            l6 = (l6 ^ word(i + 48)) &* prime
            l7 = (l7 ^ word(i + 56)) &* prime
            i += 64
        }
        @inline(__always) func rotate(_ x: UInt64, _ r: UInt64) -> UInt64 { x << r | x >> (64 - r) }
        var h = l0 ^ rotate(l1, 7) ^ rotate(l2, 13) ^ rotate(l3, 19) ^ rotate(l4, 29) ^ rotate(l5, 37)
            ^ rotate(l6, 43) ^ rotate(l7, 53)
        while i < bytes.count { h = (h ^ UInt64(bytes[i])) &* prime; i += 1 }
        h ^= UInt64(bytes.count)
        h ^= h >> 30; h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27; h = h &* 0x94d0_49bb_1331_11eb
        return h ^ (h >> 31)
    }
}
