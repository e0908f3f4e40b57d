/// The stream's framing.  A stream is `StreamHeader` then frames until `end`:
///
///     frame := kind u16 | version u16 | reserved u32 (0) | payloadLength u64
///              | payload | checksum u64 (FrameChecksum of the payload)
///
/// All integers little-endian.  Kind 0 is reserved as invalid.
public enum FrameKind: UInt16, Sendable, CaseIterable {
    case invalid = 0
    /// The source's configuration; the destination checks it against its own.
    case configuration = 1
    /// A batch of page records.
    case pages = 2
    /// One piece of migratable state (a vCPU, a device): name, version, bytes.
    case section = 3
    /// The last frame: the stream is complete.
    case end = 4
    /// Which chunks of RAM are resident on the source (`RAMResidency`); optional, before the first page.
    case residency = 5

    /// Each kind's current version; the decoder accepts exactly these (v1 of the stream).
    var supportedVersions: ClosedRange<UInt16> { 1...1 }
}

public struct FrameHeader: Equatable, Sendable {
    public static let byteCount = 16
    public static let trailerByteCount = 8
    public let kind: FrameKind
    public let version: UInt16
    public let payloadLength: UInt64

    /// Decodes and checks the 16 header bytes at the start of `bytes`.
    public static func decode(_ bytes: [UInt8], at start: Int = 0,
                              maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload) throws(ProtocolError) -> FrameHeader {
        var r = WireReader(bytes, range: start..<min(bytes.count, start + byteCount))
        let rawKind = try r.u16("frame kind")
        guard let kind = FrameKind(rawValue: rawKind), kind != .invalid else { throw .invalidFrameKind(rawKind) }
        let version = try r.u16("frame version")
        guard kind.supportedVersions.contains(version) else { throw .unsupportedFrameVersion(kind: rawKind, version: version) }
        guard try r.u32("frame reserved") == 0 else { throw .reservedFieldNotZero }
        let length = try r.u64("frame length")
        guard length <= maximumPayload else { throw .payloadTooLarge(length, limit: maximumPayload) }
        return FrameHeader(kind: kind, version: version, payloadLength: length)
    }

    /// The header bytes of a frame of `kind` with a payload of `length` bytes.
    public static func encode(_ kind: FrameKind, payloadLength length: Int) -> [UInt8] {
        var w = WireWriter(capacity: byteCount)
        w.u16(kind.rawValue)
        w.u16(1)
        w.u32(0)
        w.u64(UInt64(length))
        return w.bytes
    }

    /// The trailer that closes a frame: the payload's checksum.
    public static func trailer(for payload: [UInt8]) -> [UInt8] {
        var w = WireWriter(capacity: trailerByteCount)
        w.u64(FrameChecksum.of(payload.span))
        return w.bytes
    }
}

/// The 16 bytes that open a stream: magic "FERRYMIG", version, flags (0).
public enum StreamHeader {
    public static let magic: [UInt8] = Array("FERRYMIG".utf8)
    public static let byteCount = 16
    public static let current: UInt32 = 1
    public static let supported: ClosedRange<UInt32> = 1...1

    public static func encode() -> [UInt8] {
        var w = WireWriter()
        w.append(magic)
        w.u32(current)
        w.u32(0)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(ProtocolError) -> UInt32 {
        guard bytes.count >= byteCount else { throw .truncated("stream header") }
        guard Array(bytes[0..<8]) == magic else { throw .badMagic }
        var r = WireReader(bytes, range: 8..<16)
        let version = try r.u32("stream version")
        guard supported.contains(version) else { throw .unsupportedVersion(version, supported: supported) }
        guard try r.u32("stream flags") == 0 else { throw .reservedFieldNotZero }
        return version
    }
}

public enum FrameEncoder {
    /// One complete frame around `payload`.
    public static func frame(_ kind: FrameKind, payload: [UInt8]) -> [UInt8] {
        var w = WireWriter(capacity: payload.count + FrameHeader.byteCount + FrameHeader.trailerByteCount)
        w.append(FrameHeader.encode(kind, payloadLength: payload.count))
        w.append(payload)
        w.append(FrameHeader.trailer(for: payload))
        return w.bytes
    }
}

/// An incremental frame decoder: feed bytes as they arrive, take frames out.
/// Checks every header field and the checksum before a payload is handed on,
/// and never buffers more than one frame of at most `maximumPayload` bytes.
public struct FrameDecoder: Sendable {
    /// 64 MiB: above any page batch (which senders cap at 4 MiB) and any device
    /// section we produce, so a hostile length cannot make us allocate without bound.
    public static let defaultMaximumPayload: UInt64 = 64 << 20

    public enum Result: Equatable, Sendable {
        case needMoreData
        case frame(FrameHeader, payload: [UInt8])
    }

    public let maximumPayload: UInt64
    private var buffer: [UInt8] = []
    private var readIndex = 0

    public init(maximumPayload: UInt64 = defaultMaximumPayload) { self.maximumPayload = maximumPayload }

    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if readIndex > 0 && readIndex == buffer.count { buffer.removeAll(keepingCapacity: true); readIndex = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedByteCount: Int { buffer.count - readIndex }

    public mutating func next() throws(ProtocolError) -> Result {
        guard bufferedByteCount >= FrameHeader.byteCount else { return .needMoreData }
        let header = try FrameHeader.decode(buffer, at: readIndex, maximumPayload: maximumPayload)
        let (kind, version, length, rawKind) = (header.kind, header.version, header.payloadLength, header.kind.rawValue)
        let total = FrameHeader.byteCount + Int(length) + FrameHeader.trailerByteCount
        guard bufferedByteCount >= total else { return .needMoreData }
        let payloadStart = readIndex + FrameHeader.byteCount
        let payload = buffer[payloadStart..<payloadStart + Int(length)]
        var trailer = WireReader(buffer, range: payloadStart + Int(length)..<readIndex + total)
        guard try trailer.u64("frame checksum") == FrameChecksum.of(payload) else { throw .checksumMismatch(kind: rawKind) }
        readIndex += total
        if readIndex > (1 << 20) && readIndex * 2 > buffer.count {     // compact occasionally
            buffer.removeFirst(readIndex)
            readIndex = 0
        }
        return .frame(FrameHeader(kind: kind, version: version, payloadLength: length), payload: Array(payload))
    }
}
