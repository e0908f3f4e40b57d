/// Little-endian fields of a device's migration state.
public struct DeviceStateEncoder: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { for i in 0..<2 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
}

/// Why a device's migration state was refused.
public struct DeviceStateError: Error, Equatable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Reads `DeviceStateEncoder`'s fields back; every read is bounds-checked.
public struct DeviceStateDecoder: Sendable {
    let bytes: [UInt8]
    var at = 0
    let what: String

    public init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

    mutating func take(_ count: Int) throws(DeviceStateError) -> ArraySlice<UInt8> {
        guard bytes.count - at >= count else { throw DeviceStateError("\(what) state ends early (\(bytes.count) bytes)") }
        defer { at += count }
        return bytes[at..<(at + count)]
    }

    public mutating func u8() throws(DeviceStateError) -> UInt8 { try take(1).first! }
    public mutating func u16() throws(DeviceStateError) -> UInt16 { try take(2).reversed().reduce(0) { $0 << 8 | UInt16($1) } }
    public mutating func u32() throws(DeviceStateError) -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    public mutating func u64() throws(DeviceStateError) -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    public mutating func bool() throws(DeviceStateError) -> Bool {
        let v = try u8()
        guard v <= 1 else { throw DeviceStateError("\(what) state has \(v) where a flag was expected") }
        return v == 1
    }

    /// Fails unless every byte was read.
    public func finish() throws(DeviceStateError) {
        guard at == bytes.count else { throw DeviceStateError("\(what) state has \(bytes.count - at) bytes too many") }
    }
}
