/// The stream's framing.  A stream is `StreamHeader` then frames until `end`:
///
///     frame := kind u16 | version u16 | sequence u32 | payloadLength u64
///              | payload | checksum u64 (FrameChecksum of the payload)
///
/// All integers little-endian.  Kind 0 is reserved as invalid.  `sequence` is
/// the frame's number on its channel (0 for the first frame after the stream
/// header, modulo 2^32), so a dropped, repeated or reordered frame is refused
/// where it happens; the `end` frame carries the count and a digest of every
/// frame before it (`StreamDigest`), so the destination knows it has all of them.
public enum FrameKind: UInt16, Sendable, CaseIterable {
    case invalid = 0
    /// The source's configuration; the destination checks it against its own.
    case configuration = 1
    /// A batch of page records.
    case pages = 2
    /// One piece of migratable state (a vCPU, a device): name, version, bytes.
    case section = 3
    /// The last frame: the stream is complete.  Payload: `EndOfStream`.
    case end = 4
    /// Which chunks of RAM are resident on the source (`RAMResidency`); optional, before the first page.
    case residency = 5
    /// A message on the return path, destination to source (`ReturnMessage`); only
    /// there: the forward stream's destination refuses it, and the return path refuses every other kind.
    case returnMessage = 16

    /// Each kind's current version; the decoder accepts exactly these.
    var supportedVersions: ClosedRange<UInt16> { 1...1 }
}

public struct FrameHeader: Equatable, Sendable {
    public static let byteCount = 16
    public static let trailerByteCount = 8
    public let kind: FrameKind
    public let version: UInt16
    /// The frame's number on its channel, modulo 2^32.
    public let sequence: UInt32
    public let payloadLength: UInt64

    public init(kind: FrameKind, version: UInt16 = 1, sequence: UInt32, payloadLength: UInt64) {
        (self.kind, self.version, self.sequence, self.payloadLength) = (kind, version, sequence, payloadLength)
    }

    /// Decodes and checks the 16 header bytes at the start of `bytes` (not the sequence: `StreamValidator` does).
    public static func decode(_ bytes: [UInt8], at start: Int = 0,
                              maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload) throws(ProtocolError) -> FrameHeader {
        var r = WireReader(bytes, range: start..<min(bytes.count, start + byteCount))
        let rawKind = try r.u16("frame kind")
        guard let kind = FrameKind(rawValue: rawKind), kind != .invalid else { throw .invalidFrameKind(rawKind) }
        let version = try r.u16("frame version")
        guard kind.supportedVersions.contains(version) else { throw .unsupportedFrameVersion(kind: rawKind, version: version) }
        let sequence = try r.u32("frame sequence")
        let length = try r.u64("frame length")
        guard length <= maximumPayload else { throw .payloadTooLarge(length, limit: maximumPayload) }
        return FrameHeader(kind: kind, version: version, sequence: sequence, payloadLength: length)
    }

    /// The header bytes of frame number `sequence`, of `kind`, with a payload of `length` bytes.
    public static func encode(_ kind: FrameKind, sequence: UInt64, payloadLength length: Int) -> [UInt8] {
        var w = WireWriter(capacity: byteCount)
        w.u16(kind.rawValue)
        w.u16(1)
        w.u32(UInt32(truncatingIfNeeded: sequence))
        w.u64(UInt64(length))
        return w.bytes
    }

    /// The trailer that closes a frame: the payload's checksum.
    public static func trailer(checksum: UInt64) -> [UInt8] {
        var w = WireWriter(capacity: trailerByteCount)
        w.u64(checksum)
        return w.bytes
    }
}

/// The 16 bytes that open a stream: magic "FERRYMIG", version, flags (0).
public enum StreamHeader {
    public static let magic: [UInt8] = Array("FERRYMIG".utf8)
    public static let byteCount = 16
    /// Version 2: frames carry sequence numbers and `end` carries the stream's digest.
    public static let current: UInt32 = 2
    public static let supported: ClosedRange<UInt32> = 2...2

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

/// The order and the whole of one channel's frames: a running digest over each
/// frame's kind, length and checksum, in order.  The `end` frame carries the
/// sender's count and digest; the receiver compares them with its own, so a
/// frame lost, repeated or moved anywhere is caught before the load is reported
/// done, whatever the sequence numbers say (they wrap at 2^32).
public struct StreamDigest: Equatable, Sendable {
    public private(set) var frames: UInt64 = 0
    public private(set) var value: UInt64 = 0x6a09_e667_f3bc_c908

    public init() {}

    public mutating func add(kind: FrameKind, payloadLength: Int, checksum: UInt64) {
        var x = value ^ checksum ^ (UInt64(kind.rawValue) << 48 | UInt64(payloadLength) & 0xffff_ffff_ffff)
        x ^= x >> 30; x = x &* 0xbf58_476d_1ce4_e5b9
        x ^= x >> 27; x = x &* 0x94d0_49bb_1331_11eb
        value = (x ^ (x >> 31)) &+ frames
        frames += 1
    }
}

/// The `end` frame's payload: `frames u64 | digest u64`, the sender's
/// `StreamDigest` over every frame before `end`.
public struct EndOfStream: Equatable, Sendable {
    public static let byteCount = 16
    public let frames: UInt64
    public let digest: UInt64

    public init(_ digest: StreamDigest) { (frames, self.digest) = (digest.frames, digest.value) }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.byteCount)
        w.u64(frames)
        w.u64(digest)
        return w.bytes
    }

    public init<C: Collection>(decoding payload: C) throws(ProtocolError) where C.Element == UInt8 {
        guard payload.count == Self.byteCount else {
            throw .malformed("the end frame has \(payload.count) bytes of payload, expected \(Self.byteCount)")
        }
        var r = WireReader(Array(payload))
        frames = try r.u64("end frame count")
        digest = try r.u64("end digest")
    }
}

/// The checks every received frame goes through, in order, for one channel:
/// header fields, the sequence number, the checksum, and at `end` the count
/// and digest of the whole stream; nothing may follow `end`.  The incremental
/// `FrameDecoder` and the engine's blocking reader both use it, so the decoder
/// tested at every split point is the one in production.
public struct StreamValidator: Sendable {
    public let maximumPayload: UInt64
    public private(set) var digest = StreamDigest()
    public private(set) var ended = false

    public init(maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload) { self.maximumPayload = maximumPayload }

    /// Decodes and checks the header of the next frame (at `start` in `bytes`).
    public func header(_ bytes: [UInt8], at start: Int = 0) throws(ProtocolError) -> FrameHeader {
        guard !ended else { throw .unexpectedFrame("a frame after the end of the stream") }
        let header = try FrameHeader.decode(bytes, at: start, maximumPayload: maximumPayload)
        let expected = UInt32(truncatingIfNeeded: digest.frames)
        guard header.sequence == expected else {
            throw .outOfSequence(kind: header.kind.rawValue, sequence: header.sequence, expected: expected)
        }
        return header
    }

    /// Checks a whole frame (its header from `header(_:)`) and counts it; for
    /// `end`, also that the sender's count and digest match what arrived.
    public mutating func accept(_ header: FrameHeader, payload: Span<UInt8>, checksum: UInt64) throws(ProtocolError) {
        guard checksum == FrameChecksum.of(payload) else { throw .checksumMismatch(kind: header.kind.rawValue) }
        if header.kind == .end {
            guard payload.count == EndOfStream.byteCount else {
                throw .malformed("the end frame has \(payload.count) bytes of payload, expected \(EndOfStream.byteCount)")
            }
            var bytes = [UInt8]()
            bytes.reserveCapacity(payload.count)
            for i in payload.indices { bytes.append(payload[i]) }
            let end = try EndOfStream(decoding: bytes)
            guard end.frames == digest.frames else {
                throw .incomplete("the source sent \(end.frames) frames before its end, \(digest.frames) arrived")
            }
            guard end.digest == digest.value else {
                throw .incomplete("the frames that arrived are not the ones the source sent (stream digest differs)")
            }
            ended = true
        }
        digest.add(kind: header.kind, payloadLength: payload.count, checksum: checksum)
    }
}

/// Builds the frames of one channel, numbering them and keeping the digest
/// its `end` frame carries (tests and tools; the engine's `StreamWriter` does
/// the same while it writes).
public struct FrameEncoder: Sendable {
    public private(set) var digest = StreamDigest()

    public init() {}

    /// The next complete frame around `payload`.
    public mutating func frame(_ kind: FrameKind, payload: [UInt8]) -> [UInt8] {
        let checksum = FrameChecksum.of(payload.span)
        var w = WireWriter(capacity: payload.count + FrameHeader.byteCount + FrameHeader.trailerByteCount)
        w.append(FrameHeader.encode(kind, sequence: digest.frames, payloadLength: payload.count))
        w.append(payload)
        w.append(FrameHeader.trailer(checksum: checksum))
        digest.add(kind: kind, payloadLength: payload.count, checksum: checksum)
        return w.bytes
    }

    /// The `end` frame: the count and digest of every frame before it.
    public mutating func end() -> [UInt8] { frame(.end, payload: EndOfStream(digest).encode()) }
}

/// An incremental frame decoder: feed bytes as they arrive, take frames out.
/// Every frame goes through `StreamValidator` (header fields, sequence,
/// checksum, the end's digest) before its payload is handed on, and never
/// more than one frame of at most `maximumPayload` bytes is buffered.
public struct FrameDecoder: Sendable {
    /// 64 MiB: above any page batch (which senders cap at 4 MiB) and any device
    /// section we produce, so a hostile length cannot make us allocate without bound.
    public static let defaultMaximumPayload: UInt64 = 64 << 20

    public enum Result: Equatable, Sendable {
        case needMoreData
        case frame(FrameHeader, payload: [UInt8])
    }

    public var maximumPayload: UInt64 { validator.maximumPayload }
    private var validator: StreamValidator
    private var buffer: [UInt8] = []
    private var readIndex = 0

    public init(maximumPayload: UInt64 = defaultMaximumPayload) { validator = StreamValidator(maximumPayload: maximumPayload) }

    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if readIndex > 0 && readIndex == buffer.count { buffer.removeAll(keepingCapacity: true); readIndex = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedByteCount: Int { buffer.count - readIndex }
    /// Whether the `end` frame has been returned (the stream is whole).
    public var ended: Bool { validator.ended }

    public mutating func next() throws(ProtocolError) -> Result {
        guard bufferedByteCount >= FrameHeader.byteCount else { return .needMoreData }
        let header = try validator.header(buffer, at: readIndex)
        let length = Int(header.payloadLength)
        let total = FrameHeader.byteCount + length + FrameHeader.trailerByteCount
        guard bufferedByteCount >= total else { return .needMoreData }
        let payloadStart = readIndex + FrameHeader.byteCount
        var trailer = WireReader(buffer, range: payloadStart + length..<readIndex + total)
        let checksum = try trailer.u64("frame checksum")
        let payload = Array(buffer[payloadStart..<payloadStart + length])
        try validator.accept(header, payload: payload.span, checksum: checksum)
        readIndex += total
        if readIndex > (1 << 20) && readIndex * 2 > buffer.count {     // compact occasionally
            buffer.removeFirst(readIndex)
            readIndex = 0
        }
        return .frame(header, payload: payload)
    }
}
