/// What the destination says to the source on the return path (sockets only;
/// a file has no return path).  Corresponds to QEMU's `MIG_RP_MSG_*`.
///
/// The return path is a stream of its own, framed like the forward stream: a
/// `StreamHeader`, then frames numbered from 0 on their own sequence, every
/// one of kind `FrameKind.returnMessage` with the payload
///
///     type u16 | body
///
///     1 loaded           (empty)                                 the stream is loaded: the destination runs the guest
///     2 failed           length u16 | UTF-8 (at most 4096 bytes) the destination refused or failed: it will not run it
///     3 shut             (empty)                                 nothing more follows (QEMU's MIG_RP_MSG_SHUT)
///     4 pageRequest      block u16 | offset u64 | length u64     postcopy: send these pages first (4 KiB aligned, length > 0)
///     5 receivedBitmap   block u16 | nwords u32 | word u64 * n   recovery: the pages of the block already received
///     6 switchoverAck    (empty)                                 the destination is ready for the switchover
///     7 applied          epoch u64                               multifd: every page sent before sync `epoch` is in RAM
///
/// Type 0 is reserved as invalid.  Every field is checked on decode and no
/// byte may follow the body.  There is no `end` frame: `shut` is the last
/// message, and the frames' checksums and sequence numbers are checked by the
/// same `StreamValidator` as the forward stream's.
public enum ReturnMessage: Equatable, Sendable {
    /// The whole stream is loaded; the destination will run the guest.
    case loaded
    /// The destination refused or failed to load the stream, and why.  Encoded
    /// at most `maximumMessage` bytes of UTF-8 (longer text is cut at a character).
    case failed(String)
    /// The destination closes the return path: no message follows.
    case shut
    /// Postcopy: the destination faulted on `[offset, offset + length)` of `block` and wants it now.
    case pageRequest(block: UInt16, offset: UInt64, length: UInt64)
    /// Postcopy recovery: bit `i` of word `i / 64` (least significant first) is page `i` of `block`, received.
    case receivedBitmap(block: UInt16, words: [UInt64])
    /// The destination has what it needs before the switchover (QEMU's switchover-ack).
    case switchoverAck
    /// Multifd (Ferry's own): every channel has passed its `sync` for `epoch`, so every
    /// page sent before it is in guest RAM.  The source waits for it before it
    /// stops the guest, so nothing of an earlier pass is still in flight then.
    case applied(epoch: UInt64)

    /// The wire's message types.  Never reuse a retired value.
    public enum MessageType: UInt16, Sendable, CaseIterable {
        case invalid = 0
        case loaded = 1
        case failed = 2
        case shut = 3
        case pageRequest = 4
        case receivedBitmap = 5
        case switchoverAck = 6
        case applied = 7
    }

    /// A `failed` reason's bound in bytes of UTF-8: enough for any error we produce.
    public static let maximumMessage = 4096
    /// Page requests are in 4 KiB units, the migration page size (a huge page is a multiple).
    public static let requestAlignment: UInt64 = 4096
    /// A received bitmap's bound: 4 Mi words (32 MiB, so the frame stays under the
    /// 64 MiB payload limit) cover 2^28 pages, 1 TiB of 4 KiB pages, per message.
    public static let maximumBitmapWords = 1 << 22

    public var type: MessageType {
        switch self {
        case .loaded: .loaded
        case .failed: .failed
        case .shut: .shut
        case .pageRequest: .pageRequest
        case .receivedBitmap: .receivedBitmap
        case .switchoverAck: .switchoverAck
        case .applied: .applied
        }
    }

    /// The frame payload: `type u16 | body`.
    public func encode() -> [UInt8] {
        var w = WireWriter()
        w.u16(type.rawValue)
        switch self {
        case .loaded, .shut, .switchoverAck:
            break
        case .failed(let message):
            let text = Self.truncated(message)
            w.u16(UInt16(text.count))
            w.append(text)
        case .pageRequest(let block, let offset, let length):
            w.u16(block)
            w.u64(offset)
            w.u64(length)
        case .receivedBitmap(let block, let words):
            precondition(words.count <= Self.maximumBitmapWords, "a received bitmap of \(words.count) words")
            w.u16(block)
            w.u32(UInt32(words.count))
            for word in words { w.u64(word) }
        case .applied(let epoch):
            w.u64(epoch)
        }
        return w.bytes
    }

    /// Decodes the payload of one return-path frame of `kind`, checking every field.
    public init(kind: FrameKind, payload: [UInt8]) throws(ProtocolError) {
        guard kind == .returnMessage else {
            throw .unexpectedFrame("a frame of kind \(kind.rawValue) on the return path, which carries only return messages")
        }
        var r = WireReader(payload)
        let rawType = try r.u16("return message type")
        guard let type = MessageType(rawValue: rawType), type != .invalid else {
            throw .malformed("unknown return message type \(rawType)")
        }
        switch type {
        case .invalid: throw .malformed("unknown return message type \(rawType)")
        case .loaded: self = .loaded
        case .shut: self = .shut
        case .switchoverAck: self = .switchoverAck
        case .applied:
            let epoch = try r.u64("applied epoch")
            guard epoch > 0 else { throw .malformed("applied epoch 0") }
            self = .applied(epoch: epoch)
        case .failed:
            let length = Int(try r.u16("failed message length"))
            guard length <= Self.maximumMessage else {
                throw .malformed("failed message of \(length) bytes (at most \(Self.maximumMessage))")
            }
            let raw = try r.bytes(length, "failed message")
            guard let text = String(validating: raw, as: UTF8.self) else { throw .malformed("failed message is not UTF-8") }
            self = .failed(text)
        case .pageRequest:
            let block = try r.u16("page request block")
            let offset = try r.u64("page request offset")
            let length = try r.u64("page request length")
            guard length > 0 else { throw .malformed("page request of 0 bytes") }
            guard offset % Self.requestAlignment == 0, length % Self.requestAlignment == 0 else {
                throw .malformed("page request at \(offset) for \(length) bytes is not \(Self.requestAlignment)-byte aligned")
            }
            guard !offset.addingReportingOverflow(length).overflow else {
                throw .malformed("page request at \(offset) for \(length) bytes overflows")
            }
            self = .pageRequest(block: block, offset: offset, length: length)
        case .receivedBitmap:
            let block = try r.u16("received bitmap block")
            let count = Int(try r.u32("received bitmap word count"))
            guard count <= Self.maximumBitmapWords else {
                throw .malformed("received bitmap of \(count) words (at most \(Self.maximumBitmapWords))")
            }
            guard count * 8 <= r.remaining else { throw .truncated("received bitmap words") }
            var words = [UInt64]()
            words.reserveCapacity(count)
            for _ in 0..<count { words.append(try r.u64("received bitmap word")) }
            self = .receivedBitmap(block: block, words: words)
        }
        guard r.isAtEnd else {
            throw .malformed("\(r.remaining) bytes after a return message of type \(rawType)")
        }
    }

    /// `message` as UTF-8, cut at a character boundary to at most `maximumMessage` bytes.
    static func truncated(_ message: String) -> [UInt8] {
        var bytes = [UInt8]()
        for scalar in message.unicodeScalars {
            let encoded = Array(String(scalar).utf8)
            guard bytes.count + encoded.count <= maximumMessage else { break }
            bytes += encoded
        }
        return bytes
    }
}

/// Builds the return path's bytes: the stream header before the first
/// message, then one `returnMessage` frame per message, numbered from 0.
/// Pure; the engine's `ReturnPathWriter` keeps one behind a lock.
public struct ReturnPathEncoder: Sendable {
    var frames = FrameEncoder()
    public private(set) var headerSent = false

    public init() {}

    /// The bytes that put `message` on the return path (the stream header too, the first time).
    public mutating func encode(_ message: ReturnMessage) -> [UInt8] {
        var bytes: [UInt8] = headerSent ? [] : StreamHeader.encode()
        headerSent = true
        bytes += frames.frame(.returnMessage, payload: message.encode())
        return bytes
    }
}

/// An incremental return-path decoder: the stream header, then frames through
/// `FrameDecoder` (so through `StreamValidator`), then `ReturnMessage`.  Pure;
/// for tests and fuzzing (the engine reads with its blocking `FrameReader`).
/// Nothing may follow `shut`.
public struct ReturnPathDecoder: Sendable {
    public enum Result: Equatable, Sendable {
        case needMoreData
        case message(ReturnMessage)
    }

    var pendingHeader: [UInt8] = []
    var headerRead = false
    var frames: FrameDecoder
    public private(set) var shut = false

    /// Return messages are small; a received bitmap is the largest (32 MiB and a few bytes).
    public init(maximumPayload: UInt64 = FrameDecoder.defaultMaximumPayload) { frames = FrameDecoder(maximumPayload: maximumPayload) }

    /// Bytes received but not yet returned as messages.
    public var bufferedByteCount: Int { pendingHeader.count + frames.bufferedByteCount }

    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if headerRead { frames.feed(bytes) } else { pendingHeader.append(contentsOf: bytes) }
    }

    public mutating func next() throws(ProtocolError) -> Result {
        if !headerRead {
            // A foreign magic or an unsupported version is refused as soon as it is
            // there, as the engine's `FrameReader` does; only a short header waits.
            do { _ = try StreamHeader.decode(pendingHeader) } catch {
                if case .truncated = error { return .needMoreData }
                throw error
            }
            headerRead = true
            frames.feed(pendingHeader[StreamHeader.byteCount...])
            pendingHeader = []
        }
        if shut, frames.bufferedByteCount > 0 { throw .unexpectedFrame("bytes after the return path was shut") }
        guard case .frame(let header, let payload, _) = try frames.next() else {
            // The engine's reader decodes a frame's message before reading its tail, so
            // a frame with a tail (never a return message) is refused as soon as its
            // payload checks, not once its tail is in.
            if let (header, payload) = frames.frameAwaitingTail { _ = try ReturnMessage(kind: header.kind, payload: payload) }
            return .needMoreData
        }
        let message = try ReturnMessage(kind: header.kind, payload: payload)
        if message == .shut { shut = true }
        return .message(message)
    }
}
