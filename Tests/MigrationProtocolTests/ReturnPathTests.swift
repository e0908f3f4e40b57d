import Testing
@testable import MigrationProtocol

/// The return path: every message round-trips through the framing, and
/// hostile bytes are refused with the field named.
@Suite struct ReturnPathTests {
    static let messages: [ReturnMessage] = [
        .loaded,
        .failed("configuration mismatch: RAM block 'pc.ram' is 64 MiB here, 128 MiB on the source"),
        .failed(""),
        .failed("ünïcödé ✓ 🚢"),
        .shut,
        .pageRequest(block: 3, offset: 0x20_0000, length: 4096),
        .pageRequest(block: 0, offset: 0, length: 2 << 20),
        .receivedBitmap(block: 1, words: [0, .max, 0x8000_0000_0000_0001]),
        .receivedBitmap(block: 0, words: []),
        .switchoverAck,
    ]
    /// The messages as one return path sends them: `shut` last.
    static let stream: [ReturnMessage] = messages.filter { $0 != .shut } + [.shut]

    /// Decodes a return-path stream fed `chunk` bytes at a time.
    func decode(_ bytes: [UInt8], chunk: Int = 1 << 20) throws -> [ReturnMessage] {
        var decoder = ReturnPathDecoder()
        var out: [ReturnMessage] = []
        var at = 0
        while at < bytes.count {
            decoder.feed(bytes[at..<min(at + chunk, bytes.count)])
            at += chunk
            while case .message(let message) = try decoder.next() { out.append(message) }
        }
        return out
    }

    func stream(_ messages: [ReturnMessage]) -> [UInt8] {
        var encoder = ReturnPathEncoder()
        return messages.flatMap { encoder.encode($0) }
    }

    /// A payload of `type` and `body`, as a hostile sender would write it.
    func payload(_ type: UInt16, _ body: (inout WireWriter) -> Void = { _ in }) -> [UInt8] {
        var w = WireWriter()
        w.u16(type)
        body(&w)
        return w.bytes
    }

    func decodePayload(_ payload: [UInt8]) throws(ProtocolError) -> ReturnMessage {
        try ReturnMessage(kind: .returnMessage, payload: payload)
    }

    @Test("a pages frame on the return path is refused once its payload checks, before its tail is in (as the engine's reader does)")
    func framesWithTailsRefusedEarly() throws {
        var frames = FrameEncoder()
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: 0, page: [UInt8](repeating: 7, count: 4096)[...])
        let frame = frames.frame(.pages, payload: batch.payload(), tail: batch.tail)
        let cut = StreamHeader.encode() + frame.prefix(frame.count - 100)
        #expect(throws: ProtocolError.unexpectedFrame("a frame of kind 2 on the return path, which carries only return messages")) {
            try decode(cut)
        }
    }

    @Test("every message round-trips alone and in one stream, fed whole or a byte at a time")
    func roundTrip() throws {
        for message in Self.messages {
            #expect(try decodePayload(message.encode()) == message)
            #expect(try decode(stream([message])) == [message])
        }
        let all = stream(Self.stream)
        for chunk in [1, 7, 16, 1 << 20] {
            #expect(try decode(all, chunk: chunk) == Self.stream, "chunk \(chunk)")
        }
        // The header goes out once, before the first frame; frames are numbered from 0.
        var encoder = ReturnPathEncoder()
        #expect(Array(encoder.encode(.loaded).prefix(8)) == StreamHeader.magic)
        let second = encoder.encode(.shut)
        #expect(try FrameHeader.decode(second) == FrameHeader(kind: .returnMessage, sequence: 1, payloadLength: 2))
    }

    @Test("a long reason is cut at a character to 4096 bytes, and stays UTF-8")
    func longReason() throws {
        let reason = String(repeating: "é", count: 3000)      // 6000 bytes
        guard case .failed(let text) = try decodePayload(ReturnMessage.failed(reason).encode()) else {
            Issue.record("not a failed message"); return
        }
        #expect(text.utf8.count == 4096)
        #expect(text == String(repeating: "é", count: 2048))
        let odd = "x" + reason                                  // the cut falls inside a character
        guard case .failed(let cut) = try decodePayload(ReturnMessage.failed(odd).encode()) else { return }
        #expect(cut.utf8.count == 4095)
    }

    @Test("a stream cut anywhere yields only the whole messages before the cut; a payload cut anywhere is refused")
    func truncation() throws {
        let bytes = stream(Self.stream)
        var boundaries = [0]
        var encoder = ReturnPathEncoder()
        for message in Self.stream { boundaries.append(boundaries.last! + encoder.encode(message).count) }
        for cut in 0..<bytes.count {
            let whole = boundaries.lastIndex { $0 <= cut }!
            #expect(try decode(Array(bytes.prefix(cut))) == Array(Self.stream.prefix(whole)), "cut at \(cut)")
        }
        for message in Self.messages {
            let full = message.encode()
            for cut in 0..<full.count {
                #expect(throws: ProtocolError.self, "\(message) cut at \(cut)") { try decodePayload(Array(full.prefix(cut))) }
            }
        }
    }

    @Test("a flipped byte anywhere in a frame is refused, or (a longer length) waits for bytes that never come")
    func flippedByte() {
        let sent: [ReturnMessage] = [.failed("no"), .pageRequest(block: 1, offset: 4096, length: 8192)]
        let bytes = stream(sent)
        for i in StreamHeader.byteCount..<bytes.count {
            var corrupt = bytes
            corrupt[i] ^= 0x40
            // Never a changed message: an error, or only the frames before the corrupt one.
            if let decoded = try? decode(corrupt) {
                #expect(decoded.count < sent.count && decoded == Array(sent.prefix(decoded.count)), "byte \(i): \(decoded)")
            }
        }
        // In a payload, it is the checksum that catches it.
        var corrupt = bytes
        corrupt[StreamHeader.byteCount + FrameHeader.byteCount + 4] ^= 1
        #expect(throws: ProtocolError.checksumMismatch(kind: FrameKind.returnMessage.rawValue)) { _ = try decode(corrupt) }
    }

    @Test("a multifd progress report round-trips")
    func appliedRoundTrip() throws {
        let message = ReturnMessage.applied(epoch: 42)
        #expect(try ReturnMessage(kind: .returnMessage, payload: message.encode()) == message)
    }

    @Test("hostile bodies: unknown type, oversized reason, bad UTF-8, misaligned or empty requests, huge bitmaps, trailing bytes")
    func hostileBodies() {
        let refusals: [([UInt8], ProtocolError)] = [
            (payload(0), .malformed("unknown return message type 0")),
            (payload(8), .malformed("unknown return message type 8")),
            (payload(7), .truncated("applied epoch")),
            (payload(7) { $0.u64(0) }, .malformed("applied epoch 0")),
            (payload(0xffff), .malformed("unknown return message type 65535")),
            (payload(2) { $0.u16(4097); $0.append([UInt8](repeating: 0x41, count: 4097)) },
             .malformed("failed message of 4097 bytes (at most 4096)")),
            (payload(2) { $0.u16(2); $0.append([0xc3, 0x28]) }, .malformed("failed message is not UTF-8")),
            (payload(2) { $0.u16(10); $0.append([1, 2]) }, .truncated("failed message")),
            (payload(4) { $0.u16(0); $0.u64(4096); $0.u64(0) }, .malformed("page request of 0 bytes")),
            (payload(4) { $0.u16(0); $0.u64(4095); $0.u64(4096) },
             .malformed("page request at 4095 for 4096 bytes is not 4096-byte aligned")),
            (payload(4) { $0.u16(0); $0.u64(0); $0.u64(100) }, .malformed("page request at 0 for 100 bytes is not 4096-byte aligned")),
            (payload(4) { $0.u16(0); $0.u64(UInt64.max - 4095); $0.u64(8192) },
             .malformed("page request at 18446744073709547520 for 8192 bytes overflows")),
            (payload(5) { $0.u16(0); $0.u32(UInt32(ReturnMessage.maximumBitmapWords + 1)) },
             .malformed("received bitmap of 4194305 words (at most 4194304)")),
            (payload(5) { $0.u16(0); $0.u32(.max) }, .malformed("received bitmap of 4294967295 words (at most 4194304)")),
            (payload(5) { $0.u16(0); $0.u32(3); $0.u64(1); $0.u64(2) }, .truncated("received bitmap words")),
            (payload(1) { $0.u8(0) }, .malformed("1 bytes after a return message of type 1")),
            (payload(3) { $0.u32(0) }, .malformed("4 bytes after a return message of type 3")),
            (payload(6) { $0.u8(9) }, .malformed("1 bytes after a return message of type 6")),
            (payload(2) { $0.u16(1); $0.append([0x41, 0]) }, .malformed("1 bytes after a return message of type 2")),
            (payload(4) { $0.u16(0); $0.u64(0); $0.u64(4096); $0.u8(0) }, .malformed("1 bytes after a return message of type 4")),
            (payload(5) { $0.u16(0); $0.u32(1); $0.u64(1); $0.u32(0) }, .malformed("4 bytes after a return message of type 5")),
            ([], .truncated("return message type")),
            ([1], .truncated("return message type")),
        ]
        for (bytes, expected) in refusals {
            #expect(throws: expected, "\(bytes.prefix(16))") { try decodePayload(bytes) }
        }
        // The same refusals arrive through the framing.
        var frames = FrameEncoder()
        let framed = StreamHeader.encode() + frames.frame(.returnMessage, payload: payload(9))
        #expect(throws: ProtocolError.malformed("unknown return message type 9")) { _ = try decode(framed) }
    }

    @Test("a forward-stream frame on the return path is refused, whatever its kind; nothing may follow shut")
    func forwardKindsRefused() {
        for kind in FrameKind.allCases where kind != .returnMessage && kind != .invalid {
            #expect(throws: ProtocolError.unexpectedFrame("a frame of kind \(kind.rawValue) on the return path, which carries only return messages")) {
                try ReturnMessage(kind: kind, payload: ReturnMessage.loaded.encode())
            }
            var frames = FrameEncoder()
            let bytes = StreamHeader.encode() + frames.frame(kind, payload: ReturnMessage.loaded.encode())
            #expect(throws: ProtocolError.self, "kind \(kind)") { _ = try decode(bytes) }
        }
        // Kind 0 is refused by the frame header itself.
        var zero = stream([.loaded])
        zero[StreamHeader.byteCount] = 0
        #expect(throws: ProtocolError.invalidFrameKind(0)) { _ = try decode(zero) }
        // Out of sequence, as on the forward stream.
        var first = ReturnPathEncoder(), second = ReturnPathEncoder()
        let replayed = first.encode(.loaded) + Array(second.encode(.loaded).dropFirst(StreamHeader.byteCount))
        #expect(throws: ProtocolError.outOfSequence(kind: FrameKind.returnMessage.rawValue, sequence: 0, expected: 1)) {
            _ = try decode(replayed)
        }
        // A stream header is required, and nothing after shut.
        #expect(throws: ProtocolError.badMagic) { _ = try decode(Array(stream([.loaded]).dropFirst(StreamHeader.byteCount)) + [UInt8](repeating: 0, count: 16)) }
        #expect(throws: ProtocolError.unexpectedFrame("bytes after the return path was shut")) { _ = try decode(stream([.shut, .loaded])) }
    }
}
