import MigrationProtocol

/// The receiving end of a stream: reads one frame at a time into a reused
/// buffer, checking the header before reading the payload (so a hostile length
/// is refused before anything is allocated) and the checksum before the
/// payload is handed on.
public struct FrameReader: ~Copyable {
    let channel: any ByteChannel
    let maximumPayload: UInt64
    var header = [UInt8](repeating: 0, count: FrameHeader.byteCount)
    var trailer = [UInt8](repeating: 0, count: FrameHeader.trailerByteCount)
    public private(set) var bytesRead: UInt64 = 0

    public init(channel: any ByteChannel, maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload) {
        self.channel = channel
        self.maximumPayload = maximumPayload
    }

    public mutating func readStreamHeader() throws(MigrationError) -> UInt32 {
        var bytes = [UInt8](repeating: 0, count: StreamHeader.byteCount)
        try Self.read(channel, StreamHeader.byteCount, into: &bytes, after: bytesRead)
        bytesRead += UInt64(StreamHeader.byteCount)
        do { return try StreamHeader.decode(bytes) } catch { throw .stream(error) }
    }

    /// Reads the next frame; `payload` is resized to its payload.
    public mutating func next(into payload: inout [UInt8]) throws(MigrationError) -> FrameHeader {
        try Self.read(channel, FrameHeader.byteCount, into: &header, after: bytesRead)
        bytesRead += UInt64(FrameHeader.byteCount)
        let decoded: FrameHeader
        do { decoded = try FrameHeader.decode(header, maximumPayload: maximumPayload) } catch { throw .stream(error) }
        let length = Int(decoded.payloadLength)
        if payload.count != length {
            if payload.count > length { payload.removeLast(payload.count - length) }
            else { payload.append(contentsOf: repeatElement(0, count: length - payload.count)) }
        }
        try Self.read(channel, length, into: &payload, after: bytesRead)
        try Self.read(channel, FrameHeader.trailerByteCount, into: &trailer, after: bytesRead + UInt64(length))
        bytesRead += UInt64(length + FrameHeader.trailerByteCount)
        var r = WireReader(trailer)
        let expected = (try? r.u64("frame checksum")) ?? 0
        guard expected == FrameChecksum.of(payload.span) else {
            throw .stream(.checksumMismatch(kind: decoded.kind.rawValue))
        }
        return decoded
    }

    private static func read(_ channel: any ByteChannel, _ count: Int, into buffer: inout [UInt8], after bytesRead: UInt64) throws(MigrationError) {
        guard count > 0 else { return }
        do { try channel.readExactly(count, into: &buffer, at: 0) } catch {
            if error == .endOfStream { throw .stream(.truncated("the stream ended after \(bytesRead) bytes")) }
            throw .channel(error)
        }
    }
}
