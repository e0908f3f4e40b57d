import NIOCore

/// One complete JSON text from a client, and where it ends in the connection's
/// byte stream (the offset just past its last byte), which tells which passed
/// descriptors it may take (`DescriptorInbox`).
public struct JSONText: Equatable, Sendable {
    public let bytes: [UInt8]
    public let end: Int
}

/// Splits a byte stream into complete top-level JSON texts, as QEMU's JSON
/// streamer does: by bracket depth, outside strings.  Whitespace between texts
/// is skipped.  A text longer than `maximumLength` is an error.
public struct JSONObjectDecoder: ByteToMessageDecoder {
    public typealias InboundOut = JSONText

    /// Far above any QMP command; bounds what a client can make us buffer.
    public static let maximumLength = 1 << 20

    public enum DecodeError: Error { case tooLong, unbalanced }

    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    /// Bytes of the stream consumed so far (texts and the whitespace between them).
    private var consumed = 0

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let view = buffer.readableBytesView
        // Leading whitespace between texts.
        if scanned == 0 {
            var skip = 0
            for byte in view { if byte == 0x20 || byte == 0x0a || byte == 0x0d || byte == 0x09 { skip += 1 } else { break } }
            if skip > 0 {
                buffer.moveReaderIndex(forwardBy: skip)
                consumed += skip
                return .continue
            }
        }
        let bytes = buffer.readableBytesView
        var index = bytes.startIndex + scanned
        while index < bytes.endIndex {
            let byte = bytes[index]
            index += 1
            if inString {
                if escaped { escaped = false } else if byte == 0x5c { escaped = true } else if byte == 0x22 { inString = false }
                continue
            }
            switch byte {
            case 0x22: inString = true
            case 0x7b, 0x5b: depth += 1
            case 0x7d, 0x5d:
                depth -= 1
                if depth < 0 { throw DecodeError.unbalanced }
            default: break
            }
            // A complete text: balanced brackets, or a bare scalar ended by whitespace.
            if depth == 0 && (byte == 0x7d || byte == 0x5d || byte == 0x0a) {
                let length = index - bytes.startIndex
                let text = buffer.readBytes(length: length) ?? []
                scanned = 0
                consumed += length
                context.fireChannelRead(Self.wrapInboundOut(JSONText(bytes: text, end: consumed)))
                return .continue
            }
        }
        scanned = index - bytes.startIndex
        if scanned > Self.maximumLength { throw DecodeError.tooLong }
        return .needMoreData
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}
