/// The stream's framing.  A stream is `StreamHeader` then frames until `end`:
///
///     frame := kind u16 | version u16 | sequence u32 | payloadLength u64 | tailLength u64
///              | payload | checksum u64 (FrameChecksum of the payload) | tail
///
/// The tail is raw bytes that follow the checked frame (page data, which the
/// receiver reads straight into guest RAM): only `pages` frames have one, and
/// their payload says what it holds and carries its checksums.
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
    /// The main channel's announcement of the other channels (`ChannelPlan`), right after the configuration.
    case channels = 6
    /// A multifd channel's barrier after a dirty sync: `epoch u64`.  Pages after it
    /// may be applied only once every channel has applied all pages before its own.
    case sync = 7
    /// The switch to postcopy (`PostcopyDiscard`), after every device's section: the
    /// destination drops the pages it names, runs the guest, and takes the rest of
    /// RAM (those pages) as it comes or as the guest faults on it.
    case postcopy = 8
    /// The opening of a postcopy connection made again after a break (recovery),
    /// right after its stream header: a `ChannelPlan` (no multifd, the original
    /// preempt flag).  The destination answers with its received bitmaps; then
    /// the discarded pages it still lacks follow as after `postcopy`.
    case resume = 9

    /// Whether frames of this kind may carry a tail.
    public var hasTail: Bool { self == .pages }
    /// A message on the return path, destination to source (`ReturnMessage`); only
    /// there: the forward stream's destination refuses it, and the return path refuses every other kind.
    case returnMessage = 16

    /// Each kind's current version; the decoder accepts exactly these.
    var supportedVersions: ClosedRange<UInt16> { 1...1 }
}

public struct FrameHeader: Equatable, Sendable {
    public static let byteCount = 24
    public static let trailerByteCount = 8
    /// A tail is at most this long: a page batch's pages (senders cut batches at 1 MiB).
    public static let maximumTail: UInt64 = 64 << 20
    public let kind: FrameKind
    public let version: UInt16
    /// The frame's number on its channel, modulo 2^32.
    public let sequence: UInt32
    public let payloadLength: UInt64
    /// Bytes that follow the checksum trailer (page data); 0 for most kinds.
    public let tailLength: UInt64

    public init(kind: FrameKind, version: UInt16 = 1, sequence: UInt32, payloadLength: UInt64, tailLength: UInt64 = 0) {
        (self.kind, self.version, self.sequence, self.payloadLength, self.tailLength) = (kind, version, sequence, payloadLength, tailLength)
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
        let tail = try r.u64("frame tail length")
        guard tail == 0 || kind.hasTail else { throw .malformed("a frame of kind \(rawKind) with a tail of \(tail) bytes") }
        guard tail <= maximumTail else { throw .payloadTooLarge(tail, limit: maximumTail) }
        return FrameHeader(kind: kind, version: version, sequence: sequence, payloadLength: length, tailLength: tail)
    }

    /// The header bytes of frame number `sequence`, of `kind`, with a payload of
    /// `length` bytes and a tail of `tailLength` after the trailer.
    public static func encode(_ kind: FrameKind, sequence: UInt64, payloadLength length: Int, tailLength: Int = 0) -> [UInt8] {
        var w = WireWriter(capacity: byteCount)
        w.u16(kind.rawValue)
        w.u16(1)
        w.u32(UInt32(truncatingIfNeeded: sequence))
        w.u64(UInt64(length))
        w.u64(UInt64(tailLength))
        return w.bytes
    }

    /// The trailer that closes a frame: the payload's checksum.
    public static func trailer(checksum: UInt64) -> [UInt8] {
        var w = WireWriter(capacity: trailerByteCount)
        w.u64(checksum)
        return w.bytes
    }
}

/// What a channel is for.  Each connection of a migration opens with a
/// `StreamHeader` naming its role, its index among channels of that role, and
/// the migration it belongs to.
public enum ChannelRole: UInt16, Sendable, CustomStringConvertible {
    case invalid = 0
    /// Control and device state; pages too when there are no multifd channels.
    case main = 1
    /// One of the parallel page channels.
    case multifd = 2
    /// Pages the destination asked for (postcopy), ahead of the background ones.
    case postcopyPreempt = 3

    public var description: String {
        switch self {
        case .invalid: "invalid"
        case .main: "main"
        case .multifd: "multifd"
        case .postcopyPreempt: "postcopy-preempt"
        }
    }
}

/// Which channel of which migration a stream is.
public struct ChannelIdentity: Equatable, Sendable, CustomStringConvertible {
    public static let idByteCount = 16
    public let role: ChannelRole
    public let index: UInt16
    /// Random per migration, chosen by the source; every channel of one migration carries it.
    public let migrationID: [UInt8]

    public init(role: ChannelRole, index: UInt16 = 0, migrationID: [UInt8] = [UInt8](repeating: 0, count: ChannelIdentity.idByteCount)) {
        precondition(migrationID.count == Self.idByteCount)
        (self.role, self.index, self.migrationID) = (role, index, migrationID)
    }

    public static let main = ChannelIdentity(role: .main)

    public var description: String { role == .multifd ? "multifd channel \(index)" : "\(role) channel" }
}

/// The 40 bytes that open every channel's stream: magic "FERRYMIG", version,
/// flags (0), then the channel's identity (the handshake):
///
///     "FERRYMIG" | version u32 | flags u32 | role u16 | index u16 | reserved u32 | migration id (16 bytes)
public enum StreamHeader {
    public static let magic: [UInt8] = Array("FERRYMIG".utf8)
    public static let byteCount = 40
    /// Version 3: every channel opens with its identity, and frames may carry tails.
    public static let current: UInt32 = 3
    public static let supported: ClosedRange<UInt32> = 3...3

    public static func encode(_ channel: ChannelIdentity = .main) -> [UInt8] {
        var w = WireWriter(capacity: byteCount)
        w.append(magic)
        w.u32(current)
        w.u32(0)
        w.u16(channel.role.rawValue)
        w.u16(channel.index)
        w.u32(0)
        w.append(channel.migrationID)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(ProtocolError) -> ChannelIdentity {
        // The magic first: another program's stream is named as such, whatever its length.
        guard bytes.count >= magic.count else { throw .truncated("stream header") }
        guard Array(bytes[0..<8]) == magic else { throw .badMagic }
        // Then the version, as `FrameReader` reads it: an older Ferry's stream is named as such however short.
        guard bytes.count >= magic.count + 4 else { throw .truncated("stream header") }
        let version = UInt32(bytes[8]) | UInt32(bytes[9]) << 8 | UInt32(bytes[10]) << 16 | UInt32(bytes[11]) << 24
        guard supported.contains(version) else { throw .unsupportedVersion(version, supported: supported) }
        guard bytes.count >= byteCount else { throw .truncated("stream header") }
        var r = WireReader(bytes, range: 12..<byteCount)
        guard try r.u32("stream flags") == 0 else { throw .reservedFieldNotZero }
        let rawRole = try r.u16("channel role")
        guard let role = ChannelRole(rawValue: rawRole), role != .invalid else { throw .malformed("channel role \(rawRole)") }
        let index = try r.u16("channel index")
        guard try r.u32("channel reserved") == 0 else { throw .reservedFieldNotZero }
        let id = Array(bytes[(byteCount - ChannelIdentity.idByteCount)..<byteCount])
        return ChannelIdentity(role: role, index: index, migrationID: id)
    }
}

/// The main channel's `channels` frame: how many multifd channels follow and
/// how their pages are compressed, or that the pages are in a mapped-ram file.
///
///     multifd u16 | compression u8 (0 none, 1 zstd) | flags u8 (bit 0: mapped-ram, bit 1: postcopy preempt) | reserved u32
///
/// With the preempt flag a `postcopy-preempt` channel connects too: after a
/// switch to postcopy it carries the pages the destination asked for.
/// With the mapped-ram flag the stream is a mapped-ram file's device state:
/// the pages are in the file's page areas, so no `pages` frame may follow and
/// no channel connects (`multifd` is how many wrote the file, for the record).
public struct ChannelPlan: Equatable, Sendable {
    public enum Compression: UInt8, Sendable { case none = 0, zstd = 1 }
    public static let byteCount = 8
    /// Bound on multifd channels (QEMU's `multifd-channels` is at most 255).
    public static let maximumMultifd: UInt16 = 255
    public let multifd: UInt16
    public let compression: Compression
    /// The pages are in a mapped-ram file, not on any channel.
    public let mappedRAM: Bool
    /// A `postcopy-preempt` channel connects after the multifd channels.
    public let preempt: Bool
    /// The source reads page requests on the preempt connection's way back (with
    /// `preempt` only): the destination sends them there, else on the main return path.
    public let preemptRequests: Bool
    static let mappedRAMFlag: UInt8 = 1
    static let preemptFlag: UInt8 = 2
    static let preemptRequestsFlag: UInt8 = 4

    public init(multifd: UInt16, compression: Compression = .none, mappedRAM: Bool = false, preempt: Bool = false,
                preemptRequests: Bool = false) {
        (self.multifd, self.compression, self.mappedRAM, self.preempt) = (multifd, compression, mappedRAM, preempt)
        self.preemptRequests = preemptRequests
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.byteCount)
        w.u16(multifd)
        w.u8(compression.rawValue)
        w.u8((mappedRAM ? Self.mappedRAMFlag : 0) | (preempt ? Self.preemptFlag : 0) | (preemptRequests ? Self.preemptRequestsFlag : 0))
        w.u32(0)
        return w.bytes
    }

    public init(decoding payload: [UInt8]) throws(ProtocolError) {
        var r = WireReader(payload)
        let count = try r.u16("multifd channel count")
        guard count <= Self.maximumMultifd else { throw .malformed("\(count) multifd channels (at most \(Self.maximumMultifd))") }
        let raw = try r.u8("multifd compression")
        guard let compression = Compression(rawValue: raw) else { throw .malformed("multifd compression \(raw)") }
        let flags = try r.u8("channel flags")
        guard flags & ~(Self.mappedRAMFlag | Self.preemptFlag | Self.preemptRequestsFlag) == 0, try r.u32("channels reserved") == 0 else {
            throw .reservedFieldNotZero
        }
        guard r.isAtEnd else { throw .malformed("\(r.remaining) extra bytes after the channel plan") }
        let mappedRAM = flags & Self.mappedRAMFlag != 0
        let preempt = flags & Self.preemptFlag != 0
        guard !mappedRAM || compression == .none else { throw .malformed("a mapped-ram file with compressed pages") }
        guard !(mappedRAM && preempt) else { throw .malformed("a mapped-ram file with a postcopy preempt channel") }
        let preemptRequests = flags & Self.preemptRequestsFlag != 0
        guard preempt || !preemptRequests else { throw .malformed("page requests on a postcopy preempt channel the plan does not have") }
        self.init(multifd: count, compression: compression, mappedRAM: mappedRAM, preempt: preempt, preemptRequests: preemptRequests)
    }
}

/// A multifd channel's `sync` frame: the epoch that starts after it (1 for the first).
public enum SyncMarker {
    public static func encode(epoch: UInt64) -> [UInt8] {
        var w = WireWriter(capacity: 8)
        w.u64(epoch)
        return w.bytes
    }

    public static func decode(_ payload: [UInt8]) throws(ProtocolError) -> UInt64 {
        guard payload.count == 8 else { throw .malformed("a sync frame of \(payload.count) bytes") }
        var r = WireReader(payload)
        return try r.u64("sync epoch")
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

    public mutating func add(kind: FrameKind, payloadLength: Int, tailLength: Int = 0, checksum: UInt64) {
        var x = value ^ checksum ^ (UInt64(kind.rawValue) << 48 | UInt64(payloadLength) & 0xffff_ffff_ffff) ^ UInt64(tailLength) &* 0x9e37_79b9_7f4a_7c15
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
    ///
    /// `excusingCorruptPayload` is for a reader that lists corruption instead of
    /// stopping at it (`ferry analyze`): a payload that does not match its
    /// checksum is then counted with the checksum its sender stored (so the
    /// end's count and digest still prove every frame arrived, in order) and
    /// reported by returning `false`.  An `end` frame is never excused.
    @discardableResult
    public mutating func accept(_ header: FrameHeader, payload: Span<UInt8>, checksum: UInt64,
                                excusingCorruptPayload: Bool = false) throws(ProtocolError) -> Bool {
        guard checksum == FrameChecksum.of(payload) else {
            guard excusingCorruptPayload, header.kind != .end else { throw .checksumMismatch(kind: header.kind.rawValue) }
            digest.add(kind: header.kind, payloadLength: payload.count, tailLength: Int(header.tailLength), checksum: checksum)
            return false
        }
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
        digest.add(kind: header.kind, payloadLength: payload.count, tailLength: Int(header.tailLength), checksum: checksum)
        return true
    }
}

/// Builds the frames of one channel, numbering them and keeping the digest
/// its `end` frame carries (tests and tools; the engine's `StreamWriter` does
/// the same while it writes).
public struct FrameEncoder: Sendable {
    public private(set) var digest = StreamDigest()

    public init() {}

    /// The next complete frame around `payload`, followed by `tail`.
    public mutating func frame(_ kind: FrameKind, payload: [UInt8], tail: [UInt8] = []) -> [UInt8] {
        let checksum = FrameChecksum.of(payload.span)
        var w = WireWriter(capacity: payload.count + tail.count + FrameHeader.byteCount + FrameHeader.trailerByteCount)
        w.append(FrameHeader.encode(kind, sequence: digest.frames, payloadLength: payload.count, tailLength: tail.count))
        w.append(payload)
        w.append(FrameHeader.trailer(checksum: checksum))
        w.append(tail)
        digest.add(kind: kind, payloadLength: payload.count, tailLength: tail.count, checksum: checksum)
        return w.bytes
    }

    /// The header and trailer of the next frame around `payload` (a writer that
    /// sends the payload and tail itself, without copying them into one array).
    public mutating func frameParts(_ kind: FrameKind, payload: [UInt8], tailLength: Int) -> (header: [UInt8], trailer: [UInt8]) {
        let checksum = FrameChecksum.of(payload.span)
        let header = FrameHeader.encode(kind, sequence: digest.frames, payloadLength: payload.count, tailLength: tailLength)
        digest.add(kind: kind, payloadLength: payload.count, tailLength: tailLength, checksum: checksum)
        return (header, FrameHeader.trailer(checksum: checksum))
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
        case frame(FrameHeader, payload: [UInt8], tail: [UInt8])
    }

    public var maximumPayload: UInt64 { validator.maximumPayload }
    private var validator: StreamValidator
    private var buffer: [UInt8] = []
    private var readIndex = 0
    /// A frame whose header, payload and checksum passed, waiting for its tail.
    private var checked: (header: FrameHeader, payload: [UInt8])?

    public init(maximumPayload: UInt64 = defaultMaximumPayload) { validator = StreamValidator(maximumPayload: maximumPayload) }

    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if readIndex > 0 && readIndex == buffer.count { buffer.removeAll(keepingCapacity: true); readIndex = 0 }
        buffer.append(contentsOf: bytes)
    }

    /// Bytes received but not yet returned as frames.
    public var bufferedByteCount: Int { buffer.count - readIndex }
    /// Whether the `end` frame has been returned (the stream is whole).
    public var ended: Bool { validator.ended }
    /// A frame whose header, payload and checksum passed, while its tail has not all arrived.
    public var frameAwaitingTail: (header: FrameHeader, payload: [UInt8])? { checked }

    public mutating func next() throws(ProtocolError) -> Result {
        // The frame's checks run as soon as its header, payload and checksum are in,
        // before its tail: as the engine's `FrameReader` does, so both refuse the same
        // frame for the same reason however much of its tail arrives.
        if checked == nil {
            guard bufferedByteCount >= FrameHeader.byteCount else { return .needMoreData }
            let header = try validator.header(buffer, at: readIndex)
            let length = Int(header.payloadLength)
            guard bufferedByteCount >= FrameHeader.byteCount + length + FrameHeader.trailerByteCount else { return .needMoreData }
            let payloadStart = readIndex + FrameHeader.byteCount
            var trailer = WireReader(buffer, range: payloadStart + length..<payloadStart + length + FrameHeader.trailerByteCount)
            let checksum = try trailer.u64("frame checksum")
            let payload = Array(buffer[payloadStart..<payloadStart + length])
            try validator.accept(header, payload: payload.span, checksum: checksum)
            checked = (header, payload)
        }
        guard let (header, payload) = checked else { return .needMoreData }
        let tailStart = readIndex + FrameHeader.byteCount + payload.count + FrameHeader.trailerByteCount
        let total = tailStart - readIndex + Int(header.tailLength)
        guard bufferedByteCount >= total else { return .needMoreData }
        checked = nil
        let tail = Array(buffer[tailStart..<readIndex + total])
        readIndex += total
        if readIndex > (1 << 20) && readIndex * 2 > buffer.count {     // compact occasionally
            buffer.removeFirst(readIndex)
            readIndex = 0
        }
        return .frame(header, payload: payload, tail: tail)
    }
}
