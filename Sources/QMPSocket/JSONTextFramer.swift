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
public struct JSONTextFramer: Sendable {
    /// Far above any QMP command; bounds what a client can make us buffer.
    public static let maximumLength = 1 << 20

    public enum FramingError: Error, Equatable { case tooLong, unbalanced }

    /// The bytes received and not yet framed.
    private var buffer = ByteBuffer()
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    /// Bytes of the stream consumed so far (texts and the whitespace between them).
    private var consumed = 0

    public init() {}

    /// Takes the next bytes of the stream.
    public mutating func append(_ bytes: some Sequence<UInt8>) {
        buffer.discardReadBytes()
        buffer.writeBytes(bytes)
    }

    /// The next complete text; nil until more bytes come.  After an error the
    /// stream cannot be framed any further.
    public mutating func next() throws(FramingError) -> JSONText? {
        // Leading whitespace between texts.
        if scanned == 0 {
            let skip = buffer.readableBytesView.prefix { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }.count
            buffer.moveReaderIndex(forwardBy: skip)
            consumed += skip
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
                if depth < 0 { throw .unbalanced }
            default: break
            }
            // A complete text: balanced brackets, or a bare scalar ended by whitespace.
            if depth == 0 && (byte == 0x7d || byte == 0x5d || byte == 0x0a) {
                let length = index - bytes.startIndex
                let text = buffer.readBytes(length: length) ?? []
                scanned = 0
                consumed += length
                return JSONText(bytes: text, end: consumed)
            }
        }
        scanned = index - bytes.startIndex
        if scanned > Self.maximumLength { throw .tooLong }
        return nil
    }
}
