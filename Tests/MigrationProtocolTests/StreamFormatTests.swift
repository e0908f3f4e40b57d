import Testing
@testable import MigrationProtocol

@Suite struct StreamFormatTests {
    let layout = MigrationConfiguration(blocks: [.init(name: "pc.ram", byteCount: 1 << 20, pageSize: 4096),
                                                 .init(name: "vga.ram", byteCount: 64 << 10, pageSize: 4096)], vcpuCount: 2)

    func page(_ fill: UInt8) -> ArraySlice<UInt8> { [UInt8](repeating: fill, count: 4096)[...] }

    func samplePayloads() -> [(FrameKind, [UInt8], [UInt8])] {
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: 0, page: page(1))
        batch.append(block: 0, offset: 4096, page: nil)
        batch.append(block: 1, offset: 8192, page: page(2))
        batch.append(block: 1, offset: 12288, page: page(3))
        return [(.configuration, layout.encode(), []), (.pages, batch.payload(), batch.tail),
                (.section, StateSection(name: "cpu/0", version: 1, state: [9, 8, 7]).encode(), [])]
    }

    func sampleStream() -> [UInt8] {
        var encoder = FrameEncoder()
        return StreamHeader.encode() + samplePayloads().flatMap { encoder.frame($0.0, payload: $0.1, tail: $0.2) } + encoder.end()
    }

    /// The sample stream's frames, each encoded as the sender numbered it, and its end frame.
    func sampleFrames() -> (frames: [[UInt8]], end: [UInt8]) {
        var encoder = FrameEncoder()
        let frames = samplePayloads().map { encoder.frame($0.0, payload: $0.1, tail: $0.2) }
        return (frames, encoder.end())
    }

    /// Decodes a whole stream fed `chunk` bytes at a time: each frame's kind, payload and tail.
    func decode(_ stream: [UInt8], chunk: Int) throws -> [(FrameKind, [UInt8], [UInt8])] {
        _ = try StreamHeader.decode(Array(stream.prefix(StreamHeader.byteCount)))
        var decoder = FrameDecoder()
        var frames: [(FrameKind, [UInt8], [UInt8])] = []
        var at = StreamHeader.byteCount
        while at < stream.count {
            decoder.feed(stream[at..<min(at + chunk, stream.count)])
            at += chunk
            while case .frame(let header, let payload, let tail) = try decoder.next() { frames.append((header.kind, payload, tail)) }
        }
        #expect(decoder.bufferedByteCount == 0)
        return frames
    }

    @Test("a stream round-trips fed whole or split at every byte boundary")
    func roundTrip() throws {
        let stream = sampleStream()
        let whole = try decode(stream, chunk: stream.count)
        #expect(whole.map(\.0) == [.configuration, .pages, .section, .end])
        #expect(try EndOfStream(decoding: whole[3].1).frames == 3)
        for chunk in [1, 2, 7, 15, 16, 17, 4095, 4096, 4097] {
            let split = try decode(stream, chunk: chunk)
            #expect(split.map(\.0) == whole.map(\.0) && split.map(\.1) == whole.map(\.1) && split.map(\.2) == whole.map(\.2), "chunk \(chunk)")
        }
        #expect(try MigrationConfiguration(decoding: whole[0].1) == layout)
        let index = try PageIndex(decoding: whole[1].1, tailLength: UInt64(whole[1].2.count), layout: layout.blocks)
        let records = index.records
        #expect(records.map(\.block) == [0, 0, 1, 1])
        #expect(records.map(\.offset) == [0, 4096, 8192, 12288])
        #expect(records.map(\.kind) == [.data, .zero, .data, .data])
        #expect(records.map(\.checksum) == [FrameChecksum.of(page(1)), 0, FrameChecksum.of(page(2)), FrameChecksum.of(page(3))])
        #expect(whole[1].2 == Array(page(1) + page(2) + page(3)), "the tail holds the data pages in record order")
        #expect(try StateSection(decoding: whole[2].1) == StateSection(name: "cpu/0", version: 1, state: [9, 8, 7]))
    }

    @Test("the channel handshake round-trips and a hostile one is refused")
    func channelIdentity() throws {
        let id = (0..<16).map { UInt8($0 * 7) }
        let identity = ChannelIdentity(role: .multifd, index: 3, migrationID: id)
        #expect(try StreamHeader.decode(StreamHeader.encode(identity)) == identity)
        #expect(StreamHeader.encode(identity).count == StreamHeader.byteCount)
        var badRole = StreamHeader.encode(identity)
        badRole[16] = 9
        #expect(throws: ProtocolError.malformed("channel role 9")) { try StreamHeader.decode(badRole) }
        var reserved = StreamHeader.encode(identity)
        reserved[20] = 1
        #expect(throws: ProtocolError.reservedFieldNotZero) { try StreamHeader.decode(reserved) }
        #expect(try ChannelPlan(decoding: ChannelPlan(multifd: 4, compression: .zstd).encode()) == ChannelPlan(multifd: 4, compression: .zstd))
        #expect(throws: ProtocolError.malformed("multifd compression 7")) { try ChannelPlan(decoding: [4, 0, 7, 0, 0, 0, 0, 0]) }
        #expect(throws: ProtocolError.malformed("256 multifd channels (at most 255)")) { try ChannelPlan(decoding: [0, 1, 0, 0, 0, 0, 0, 0]) }
        // Page requests on the preempt connection's way back: flag bit 2, only with the preempt channel (bit 1).
        let requestsBack = ChannelPlan(multifd: 0, preempt: true, preemptRequests: true)
        #expect(requestsBack.encode() == [0, 0, 0, 6, 0, 0, 0, 0])
        #expect(try ChannelPlan(decoding: requestsBack.encode()) == requestsBack)
        #expect(try ChannelPlan(decoding: [0, 0, 0, 2, 0, 0, 0, 0]) == ChannelPlan(multifd: 0, preempt: true))
        #expect(throws: ProtocolError.malformed("page requests on a postcopy preempt channel the plan does not have")) {
            try ChannelPlan(decoding: [0, 0, 0, 4, 0, 0, 0, 0])
        }
        #expect(throws: ProtocolError.reservedFieldNotZero) { try ChannelPlan(decoding: [0, 0, 0, 8, 0, 0, 0, 0]) }
        #expect(try SyncMarker.decode(SyncMarker.encode(epoch: 42)) == 42)
        #expect(throws: ProtocolError.malformed("a sync frame of 7 bytes")) { try SyncMarker.decode([0, 0, 0, 0, 0, 0, 0]) }
    }

    @Test("a page scan's checksum is the frame checksum, and it finds zero pages")
    func pageScan() {
        for fill: UInt8 in [0, 1, 0xff] {
            let bytes = [UInt8](repeating: fill, count: 4096)
            let scan = PageScan.of(bytes.span)
            #expect(scan.checksum == FrameChecksum.of(bytes[...]))
            #expect(scan.isZero == (fill == 0))
        }
        var last = [UInt8](repeating: 0, count: 4096)
        last[4095] = 1
        #expect(!PageScan.of(last.span).isZero, "the last byte counts")
        var odd = [UInt8](repeating: 0, count: 100)
        odd[99] = 1
        #expect(!PageScan.of(odd.span).isZero, "bytes past the last whole block count")
    }

    @Test func headerIsChecked() {
        #expect(throws: ProtocolError.badMagic) { try StreamHeader.decode(Array("QEMU".utf8) + [UInt8](repeating: 0, count: 12)) }
        var future = StreamHeader.encode()
        future[8] = 9
        #expect(throws: ProtocolError.unsupportedVersion(9, supported: 3...3)) { try StreamHeader.decode(future) }
        var version2 = StreamHeader.encode()
        version2[8] = 2
        #expect(throws: ProtocolError.unsupportedVersion(2, supported: 3...3), "v2 streams had no channel identity or tails") {
            try StreamHeader.decode(version2)
        }
        #expect(throws: ProtocolError.truncated("stream header")) { try StreamHeader.decode([0x46]) }
        #expect(throws: ProtocolError.unsupportedVersion(2, supported: 3...3), "named before the channel identity arrives") {
            try StreamHeader.decode(Array(version2.prefix(12)))
        }
        var decoder = ReturnPathDecoder()
        decoder.feed(version2.prefix(12))
        #expect(throws: ProtocolError.unsupportedVersion(2, supported: 3...3)) { try decoder.next() }
    }

    @Test("a corrupted byte anywhere in a frame is caught")
    func corruptionIsCaught() {
        var encoder = FrameEncoder()
        let frame = encoder.frame(.pages, payload: { var b = PageBatchWriter(); b.append(block: 0, offset: 0, page: page(5)); return b.payload() }(),
                                  tail: Array(page(5)))
        // The header and index are the frame's; the tail's pages are checked against the index's checksums.
        for position in stride(from: FrameHeader.byteCount, to: frame.count - 4096, by: 5) {
            var bad = frame
            bad[position] ^= 0x10
            var decoder = FrameDecoder()
            decoder.feed(bad)
            #expect(throws: ProtocolError.checksumMismatch(kind: 2)) { _ = try decoder.next() }
        }
    }

    @Test("hostile headers: invalid kind, wrong sequence, huge lengths")
    func hostileHeaders() {
        func header(kind: UInt16, version: UInt16 = 1, sequence: UInt32 = 0, length: UInt64, tail: UInt64 = 0) -> [UInt8] {
            var w = WireWriter()
            w.u16(kind); w.u16(version); w.u32(sequence); w.u64(length); w.u64(tail)
            return w.bytes
        }
        for (bytes, error) in [(header(kind: 0, length: 0), ProtocolError.invalidFrameKind(0)),
                               (header(kind: 99, length: 0), .invalidFrameKind(99)),
                               (header(kind: 2, version: 2, length: 0), .unsupportedFrameVersion(kind: 2, version: 2)),
                               (header(kind: 2, sequence: 1, length: 0), .outOfSequence(kind: 2, sequence: 1, expected: 0)),
                               (header(kind: 2, length: UInt64.max), .payloadTooLarge(UInt64.max, limit: 64 << 20)),
                               (header(kind: 2, length: 8, tail: UInt64.max), .payloadTooLarge(UInt64.max, limit: 64 << 20)),
                               (header(kind: 3, length: 8, tail: 4096), .malformed("a frame of kind 3 with a tail of 4096 bytes"))] {
            var decoder = FrameDecoder()
            decoder.feed(bytes)
            #expect(throws: error) { _ = try decoder.next() }
        }
    }

    @Test("hostile page records never point outside a block, and the tail must fit the index")
    func hostilePageRecords() throws {
        func index(tail: UInt64 = 0, flags: UInt16 = 0, _ build: (inout WireWriter) -> Void) throws -> [PageRecord] {
            var records = WireWriter()
            build(&records)
            var w = WireWriter()
            w.u32(UInt32(records.bytes.count / PageFrame.recordByteCount)); w.u16(flags); w.u16(0)
            w.append(records.bytes)
            return try PageIndex(decoding: w.bytes, tailLength: tail, layout: layout.blocks).records
        }
        func record(_ w: inout WireWriter, kind: UInt8 = 2, block: UInt16 = 0, offset: UInt64, checksum: UInt64 = 0, reserved: UInt8 = 0) {
            w.u8(kind); w.u8(reserved); w.u16(block); w.u32(0); w.u64(offset); w.u64(checksum)
        }
        // Offset at the end of the block, unaligned, wrapping, unknown block.
        #expect(throws: ProtocolError.pageOutsideBlock(block: "pc.ram", offset: 1 << 20)) { try index { record(&$0, offset: 1 << 20) } }
        #expect(throws: ProtocolError.pageOutsideBlock(block: "pc.ram", offset: 100)) { try index { record(&$0, offset: 100) } }
        #expect(throws: ProtocolError.pageOutsideBlock(block: "vga.ram", offset: UInt64.max - 4095)) {
            try index { record(&$0, block: 1, offset: UInt64.max - 4095) }
        }
        #expect(throws: ProtocolError.unknownBlock(7)) { try index { record(&$0, block: 7, offset: 0) } }
        #expect(throws: ProtocolError.malformed("record 0 has kind 0")) { try index { record(&$0, kind: 0, offset: 0) } }
        #expect(throws: ProtocolError.reservedFieldNotZero) { try index { record(&$0, offset: 0, reserved: 1) } }
        #expect(throws: ProtocolError.malformed("zero record 0 has a checksum")) { try index { record(&$0, offset: 0, checksum: 5) } }
        // The tail must be exactly the data pages (or a bounded compressed frame).
        #expect(throws: ProtocolError.malformed("a tail of 4095 bytes for 4096 bytes of pages")) {
            try index(tail: 4095) { record(&$0, kind: 1, offset: 0) }
        }
        #expect(throws: ProtocolError.malformed("a tail of 4096 bytes for 0 bytes of pages")) { try index(tail: 4096) { record(&$0, offset: 0) } }
        #expect(throws: ProtocolError.malformed("a compressed tail of 99999 bytes for 4096 bytes of pages")) {
            try index(tail: 99999, flags: 1) { record(&$0, kind: 1, offset: 0) }
        }
        #expect(throws: ProtocolError.malformed("page frame flags 2")) { try index(flags: 2) { record(&$0, offset: 0) } }
        // A compressed frame claims at most 4 MiB of pages: its decompressed size is allocated before its tail arrives.
        let big: [MigrationConfiguration.Block] = [.init(name: "pc.ram", byteCount: 64 << 20, pageSize: 4096)]
        func compressed(_ pages: Int) throws -> Int {
            var records = WireWriter()
            for page in 0..<pages { record(&records, kind: 1, offset: UInt64(page) * 4096) }
            var w = WireWriter()
            w.u32(UInt32(pages)); w.u16(1); w.u16(0)
            w.append(records.bytes)
            return try PageIndex(decoding: w.bytes, tailLength: 8192, layout: big).dataByteCount
        }
        #expect(try compressed(1024) == 4 << 20)
        #expect(throws: ProtocolError.malformed("a compressed frame of \(1025 * 4096) bytes of pages (at most \(4 << 20))")) { try compressed(1025) }
        #expect(try index(tail: 4096) { record(&$0, kind: 1, offset: 4096, checksum: 9) } == [PageRecord(block: 0, offset: 4096, kind: .data, checksum: 9)])
        // A lying count.
        var lying = WireWriter()
        lying.u32(4_000_000_000); lying.u16(0); lying.u16(0)
        #expect(throws: ProtocolError.malformed("record count 4000000000 does not match the 0 bytes of records")) {
            try PageIndex(decoding: lying.bytes, tailLength: 0, layout: layout.blocks)
        }
    }

    @Test("a configuration mismatch names the difference")
    func configurationMismatch() throws {
        let other = MigrationConfiguration(blocks: [.init(name: "pc.ram", byteCount: 2 << 20, pageSize: 4096),
                                                    .init(name: "vga.ram", byteCount: 64 << 10, pageSize: 4096)], vcpuCount: 2)
        #expect(throws: ProtocolError.configurationMismatch("RAM block 'pc.ram' is 2097152 bytes on the source, 1048576 here")) {
            try layout.check(incoming: other)
        }
        #expect(throws: ProtocolError.configurationMismatch("source has 1 vCPUs, destination 2")) {
            try layout.check(incoming: MigrationConfiguration(blocks: layout.blocks, vcpuCount: 1))
        }
        try layout.check(incoming: try MigrationConfiguration(decoding: layout.encode()))
        #expect(throws: ProtocolError.self) { try MigrationConfiguration(decoding: [1, 0, 0, 0, 0, 0]) }
    }

    @Test("a residency round-trips, and a hostile one is refused field by field")
    func residency() throws {
        // 1 MiB block: one 2 MiB chunk; the second block covers 3 chunks.
        let blocks: [MigrationConfiguration.Block] = [.init(name: "pc.ram", byteCount: 1 << 20, pageSize: 4096),
                                                      .init(name: "vga.ram", byteCount: 5 << 20, pageSize: 4096)]
        let residency = RAMResidency(words: [[1], [0b101]])
        #expect(try RAMResidency(decoding: residency.encode(), layout: blocks) == residency)
        #expect(RAMResidency.chunkCount(byteCount: 5 << 20) == 3)
        #expect(throws: ProtocolError.malformed("residency of block 'vga.ram' marks chunks past its end")) {
            try RAMResidency(decoding: RAMResidency(words: [[1], [0b1000]]).encode(), layout: blocks)
        }
        #expect(throws: ProtocolError.malformed("residency for 1 blocks, the configuration has 2")) {
            try RAMResidency(decoding: RAMResidency(words: [[1]]).encode(), layout: blocks)
        }
        #expect(throws: ProtocolError.malformed("residency of block 'pc.ram' has 2 words, expected 1")) {
            try RAMResidency(decoding: RAMResidency(words: [[1, 0], [1]]).encode(), layout: blocks)
        }
        var otherChunk = residency.encode()
        otherChunk[2] = 0x40      // 4 MiB chunks
        #expect(throws: ProtocolError.malformed("residency chunk size 4194304, expected 2097152")) {
            try RAMResidency(decoding: otherChunk, layout: blocks)
        }
        #expect(throws: ProtocolError.malformed("1 extra bytes after the residency")) {
            try RAMResidency(decoding: residency.encode() + [0], layout: blocks)
        }
        #expect(throws: ProtocolError.truncated("residency word 0 of block 'vga.ram'")) {
            try RAMResidency(decoding: Array(residency.encode().dropLast(8)), layout: blocks)
        }
    }

    @Test("every single-bit flip and every swap of two 8-byte words changes the checksum")
    func checksumSeesEveryFlip() {
        let bytes = (0..<(3 * 64 + 13)).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let original = FrameChecksum.of(bytes[...])
        for index in bytes.indices {
            for bit in 0..<8 {
                var flipped = bytes
                flipped[index] ^= 1 << bit
                #expect(FrameChecksum.of(flipped[...]) != original, "byte \(index) bit \(bit)")
            }
        }
        for a in stride(from: 0, to: 3 * 64, by: 8) {
            for b in stride(from: a + 8, to: 3 * 64, by: 8) where bytes[a..<a + 8] != bytes[b..<b + 8] {
                var swapped = bytes
                for k in 0..<8 { swapped.swapAt(a + k, b + k) }
                #expect(FrameChecksum.of(swapped[...]) != original, "words at \(a) and \(b)")
            }
        }
        #expect(FrameChecksum.of(bytes[...]) == original, "deterministic")
        #expect(FrameChecksum.of([]) != FrameChecksum.of([0]), "the length counts")
    }

    /// Decodes frames (after the stream header) until the end frame or an error.
    func decodeFrames(_ bytes: [UInt8]) throws -> [FrameKind] {
        var decoder = FrameDecoder()
        decoder.feed(bytes)
        var kinds: [FrameKind] = []
        while case .frame(let header, _, _) = try decoder.next() { kinds.append(header.kind) }
        return kinds
    }

    @Test("a valid frame dropped, duplicated, swapped or moved is refused where it happens")
    func wholeFramesOutOfOrder() throws {
        let (frames, end) = sampleFrames()
        #expect(try decodeFrames(frames.flatMap { $0 } + end) == [.configuration, .pages, .section, .end])
        let dropped = [frames[0], frames[2]].flatMap { $0 } + end
        #expect(throws: ProtocolError.outOfSequence(kind: 3, sequence: 2, expected: 1)) { try decodeFrames(dropped) }
        let duplicated = [frames[0], frames[1], frames[1], frames[2]].flatMap { $0 } + end
        #expect(throws: ProtocolError.outOfSequence(kind: 2, sequence: 1, expected: 2)) { try decodeFrames(duplicated) }
        let swapped = [frames[0], frames[2], frames[1]].flatMap { $0 } + end
        #expect(throws: ProtocolError.outOfSequence(kind: 3, sequence: 2, expected: 1)) { try decodeFrames(swapped) }
        let moved = [frames[1], frames[2], frames[0]].flatMap { $0 } + end
        #expect(throws: ProtocolError.outOfSequence(kind: 2, sequence: 1, expected: 0)) { try decodeFrames(moved) }
        let dropLast = [frames[0], frames[1]].flatMap { $0 }
        var renumbered = FrameEncoder()
        _ = renumbered.frame(.configuration, payload: [])
        _ = renumbered.frame(.pages, payload: [])
        let endOfTwo = renumbered.end()
        // The last frame dropped and an end that claims what arrived: the digest still differs.
        #expect(throws: ProtocolError.self) { try decodeFrames(dropLast + endOfTwo) }
    }

    @Test("frames renumbered to hide a change still fail the end frame's digest; the end must be whole and last")
    func endFrameDigest() throws {
        // A forger renumbers the frames after swapping two: the sequence checks pass, the digest does not.
        let payloads = samplePayloads()
        var honest = FrameEncoder()
        _ = payloads.map { honest.frame($0.0, payload: $0.1, tail: $0.2) }
        let honestEnd = honest.end()
        var forger = FrameEncoder()
        let reordered = [payloads[0], payloads[2], payloads[1]].flatMap { forger.frame($0.0, payload: $0.1, tail: $0.2) }
        #expect(throws: ProtocolError.incomplete("the frames that arrived are not the ones the source sent (stream digest differs)")) {
            try decodeFrames(reordered + honestEnd)
        }
        // An end frame with extra payload, or none.
        var short = FrameEncoder()
        let bad = short.frame(.configuration, payload: []) + short.frame(.end, payload: [])
        #expect(throws: ProtocolError.malformed("the end frame has 0 bytes of payload, expected 16")) { try decodeFrames(bad) }
        var long = FrameEncoder()
        let first = long.frame(.configuration, payload: [])
        let longEnd = long.frame(.end, payload: EndOfStream(long.digest).encode() + [0])
        #expect(throws: ProtocolError.malformed("the end frame has 17 bytes of payload, expected 16")) { try decodeFrames(first + longEnd) }
        // Nothing may follow the end.
        var after = FrameEncoder()
        let tail = after.end() + after.frame(.pages, payload: [])
        #expect(throws: ProtocolError.unexpectedFrame("a frame after the end of the stream")) { try decodeFrames(tail) }
    }
}
