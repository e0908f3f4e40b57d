import GuestMemory
import MigrationProtocol

/// The receiving end of a stream: reads one frame at a time into a reused
/// buffer.  Every frame goes through the same `StreamValidator` as
/// `FrameDecoder` (header fields before the payload is read, so a hostile
/// length is refused before anything is allocated; the sequence number; the
/// checksum before the payload is handed on; the end frame's digest).
public struct FrameReader: ~Copyable {
    let channel: any ByteChannel
    var validator: StreamValidator
    var header = [UInt8](repeating: 0, count: FrameHeader.byteCount)
    var trailer = [UInt8](repeating: 0, count: FrameHeader.trailerByteCount)
    public private(set) var bytesRead: UInt64 = 0
    /// The tail of the last frame, not yet read: the caller reads it before the next frame.
    public private(set) var pendingTail: UInt64 = 0
    /// A payload buffer starts at most this large (a page batch fits) and doubles as bytes arrive.
    static let initialPayloadBytes = 4 << 20

    /// Whether a frame whose payload does not match its checksum is returned
    /// (and `lastFrameIntact` cleared) rather than refused: `ferry analyze`
    /// lists every corrupt frame.  A corrupt `end` is refused either way.
    let listsCorruptFrames: Bool
    /// Whether the payload `next` last returned matched its checksum (always, unless `listsCorruptFrames`).
    public private(set) var lastFrameIntact = true

    public init(channel: any ByteChannel, maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload,
                listingCorruptFrames: Bool = false) {
        self.channel = channel
        validator = StreamValidator(maximumPayload: maximumPayload)
        listsCorruptFrames = listingCorruptFrames
    }

    /// Reads the header that opens the stream: which channel of which migration this is.
    public mutating func readStreamHeader() throws(MigrationError) -> ChannelIdentity {
        var bytes = [UInt8](repeating: 0, count: StreamHeader.byteCount)
        // The magic and version first: another program's stream, or an older
        // Ferry's, is named as such however short it is.
        let whole = StreamHeader.byteCount, magic = StreamHeader.magic.count
        try Self.read(channel, &bytesRead, magic, into: &bytes, what: "the stream header", whole: whole)
        guard Array(bytes[0..<magic]) == StreamHeader.magic else { throw .stream(.badMagic) }
        try Self.read(channel, &bytesRead, 4, into: &bytes, at: magic, what: "the stream header", whole: whole, before: magic)
        let version = UInt32(bytes[8]) | UInt32(bytes[9]) << 8 | UInt32(bytes[10]) << 16 | UInt32(bytes[11]) << 24
        guard StreamHeader.supported.contains(version) else {
            throw .stream(.unsupportedVersion(version, supported: StreamHeader.supported))
        }
        try Self.read(channel, &bytesRead, whole - magic - 4, into: &bytes, at: magic + 4, what: "the stream header",
                      whole: whole, before: magic + 4)
        do { return try StreamHeader.decode(bytes) } catch { throw .stream(error) }
    }

    /// Reads the last frame's tail into the guest memory `list` names (exactly its length).
    public mutating func readTail(into list: borrowing ScatterList) throws(MigrationError) {
        guard UInt64(list.byteCount) == pendingTail else {
            throw .invalidState("a tail of \(pendingTail) bytes read into \(list.byteCount) bytes")
        }
        do { try channel.read(into: list) } catch {
            throw error == .endOfStream ? .stream(.truncated("the stream ended inside the pages of a frame")) : .channel(error)
        }
        bytesRead += pendingTail
        pendingTail = 0
    }

    /// Reads the last frame's tail into `buffer`, resized to it (compressed pages).
    public mutating func readTail(into buffer: inout [UInt8]) throws(MigrationError) {
        let count = Int(pendingTail)
        if buffer.count != count { buffer = [UInt8](repeating: 0, count: count) }
        try Self.read(channel, &bytesRead, count, into: &buffer, what: "the tail of a frame")
        pendingTail = 0
    }

    /// Reads the next frame; `payload` is resized to its payload.
    public mutating func next(into payload: inout [UInt8]) throws(MigrationError) -> FrameHeader {
        guard pendingTail == 0 else { throw .invalidState("the tail of the previous frame was not read") }
        try Self.read(channel, &bytesRead, FrameHeader.byteCount, into: &header, what: "a frame header")
        let decoded: FrameHeader
        do { decoded = try validator.header(header) } catch { throw .stream(error) }
        let length = Int(decoded.payloadLength)
        // The buffer grows as bytes arrive: a hostile length costs what was sent, not what it claims.
        var done = 0
        while done < length || payload.count != length {
            let target = min(length, max(done * 2, Self.initialPayloadBytes))
            if payload.count > target { payload.removeLast(payload.count - target) }
            else if payload.count < target { payload.append(contentsOf: repeatElement(0, count: target - payload.count)) }
            try Self.read(channel, &bytesRead, target - done, into: &payload, at: done,
                          what: "the payload of a frame of kind \(decoded.kind.rawValue)", whole: length, before: done)
            done = target
        }
        try Self.read(channel, &bytesRead, FrameHeader.trailerByteCount, into: &trailer,
                      what: "the checksum of a frame of kind \(decoded.kind.rawValue)")
        var r = WireReader(trailer)
        let checksum = (try? r.u64("frame checksum")) ?? 0
        do {
            lastFrameIntact = try validator.accept(decoded, payload: payload.span, checksum: checksum,
                                                   excusingCorruptPayload: listsCorruptFrames)
        } catch { throw .stream(error) }
        pendingTail = decoded.tailLength
        return decoded
    }

    /// Reads exactly `count` bytes into `buffer[offset...]`; a stream that ends first
    /// says how far it got (`before` bytes of a `whole` already read, for a payload read in parts).
    private static func read(_ channel: any ByteChannel, _ bytesRead: inout UInt64,
                             _ count: Int, into buffer: inout [UInt8], at offset: Int = 0,
                             what: @autoclosure () -> String, whole: Int? = nil, before: Int = 0) throws(MigrationError) {
        var done = 0
        while done < count {
            let got: Int
            do { got = try channel.read(upTo: count - done, into: &buffer, at: offset + done) } catch { throw .channel(error) }
            bytesRead += UInt64(got)
            if got == 0 {
                throw .stream(.truncated("the stream ended after \(bytesRead) bytes, \(before + done) of the \(whole ?? count) bytes of \(what())"))
            }
            done += got
        }
    }
}
