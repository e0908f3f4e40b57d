/// What the destination answers on the return path once the stream is loaded
/// (sockets only; a file has no return path):
///
///     "FERRYACK" | status u32 (0 loaded, 1 failed) | length u32 | UTF-8 message (≤ 4096)
///
/// The source counts the migration complete only after a "loaded" answer, so
/// a destination that fails or dies at the end leaves the source guest running.
public enum ReturnMessage: Equatable, Sendable {
    case loaded
    case failed(String)

    public static let magic: [UInt8] = Array("FERRYACK".utf8)
    public static let headerByteCount = 16
    public static let maximumMessage = 4096

    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.append(Self.magic)
        switch self {
        case .loaded:
            w.u32(0)
            w.u32(0)
        case .failed(let message):
            let text = Array(message.utf8.prefix(Self.maximumMessage))
            w.u32(1)
            w.u32(UInt32(text.count))
            w.append(text)
        }
        return w.bytes
    }

    /// Decodes the 16-byte header: the status and the message length that follows.
    public static func decodeHeader(_ bytes: [UInt8]) throws(ProtocolError) -> (failed: Bool, messageLength: Int) {
        guard bytes.count >= headerByteCount else { throw .truncated("return-path answer") }
        guard Array(bytes[0..<8]) == magic else { throw .malformed("return-path answer has bad magic") }
        var r = WireReader(bytes, range: 8..<16)
        let status = try r.u32("return-path status")
        let length = Int(try r.u32("return-path message length"))
        guard status <= 1 else { throw .malformed("return-path status \(status)") }
        guard length <= maximumMessage, status == 1 || length == 0 else { throw .malformed("return-path message of \(length) bytes") }
        return (status == 1, length)
    }
}
