import Testing
@testable import MigrationProtocol

/// The mapped-ram header and per-block metadata: round trips, and every kind
/// of hostile header refused with an error that names what is wrong.  Each
/// tampered header is re-encoded (so its checksum is right again) to reach the
/// checks behind the checksum.
@Suite struct MappedRAMFileTests {
    static let blocks: [MigrationConfiguration.Block] = [.init(name: "pc.ram", byteCount: 4 << 20, pageSize: 4096),
                                                         .init(name: "vga.ram", byteCount: 100 * 4096, pageSize: 4096)]
    static let stateLength: UInt64 = 5000

    var layout: MappedRAMLayout { get throws { try MappedRAMLayout(blocks: Self.blocks) } }
    var header: MappedRAMHeader {
        get throws { MappedRAMHeader(layout: try layout, generation: 7, complete: true, stateLength: Self.stateLength) }
    }
    var fileLength: UInt64 { get throws { try layout.stateOffset + Self.stateLength } }

    /// The error `bytes` are refused with, as text.
    func refusal(_ bytes: [UInt8], fileLength: UInt64? = nil) throws -> String {
        let length = try fileLength ?? self.fileLength
        do {
            _ = try MappedRAMHeader(decoding: bytes, fileLength: length)
            Issue.record("accepted")
            return ""
        } catch { return error.description }
    }

    func refusal(_ change: (inout MappedRAMHeader) -> Void) throws -> String {
        var tampered = try header
        change(&tampered)
        return try refusal(tampered.encode())
    }

    /// `bytes` with `patch` at `offset` and the trailing checksum recomputed.
    func patched(_ bytes: [UInt8], at offset: Int, _ patch: [UInt8]) -> [UInt8] {
        var out = bytes
        out.replaceSubrange(offset..<offset + patch.count, with: patch)
        var w = WireWriter()
        w.u64(FrameChecksum.of(out[0..<out.count - 8]))
        out.replaceSubrange(out.count - 8..<out.count, with: w.bytes)
        return out
    }

    @Test("the layout: regions aligned, in order, disjoint; the state after the last page area")
    func layoutRegions() throws {
        let layout = try layout
        #expect(layout.entries.map(\.bitmapOffset) == [4096, 16384])
        #expect(layout.entries.allSatisfy { $0.pagesOffset % MappedRAMFormat.pageAreaAlignment == 0 })
        #expect(layout.entries[1].pagesOffset >= layout.entries[0].pagesOffset + (4 << 20))
        #expect(layout.stateOffset == layout.entries[1].pagesOffset + 100 * 4096)
        #expect(layout.pageOffset(block: 1, page: 3) == layout.entries[1].pagesOffset + 3 * 4096)
        #expect(throws: ProtocolError.self) { try MappedRAMLayout(blocks: []) }
        #expect(throws: ProtocolError.self) {
            try MappedRAMLayout(blocks: [Self.blocks[0], .init(name: "rom", byteCount: 1 << 21, pageSize: 1 << 21)])
        }
    }

    @Test("a header round-trips, and its length is known from its first bytes")
    func headerRoundTrip() throws {
        let bytes = try header.encode()
        #expect(bytes.count == MappedRAMHeader.byteCount(blocks: 2))
        #expect(try MappedRAMHeader.totalByteCount(prefix: Array(bytes.prefix(MappedRAMFormat.fixedHeaderBytes))) == bytes.count)
        let decoded = try MappedRAMHeader(decoding: bytes, fileLength: try fileLength)
        #expect(try decoded == header)
        #expect(decoded.isComplete && decoded.generation == 7 && decoded.entries.map(\.name) == ["pc.ram", "vga.ram"])
        try decoded.check(against: Self.blocks)
        #expect(throws: ProtocolError.self) { try decoded.check(against: [Self.blocks[0]]) }
        // An incomplete header says where the state will go but need not have it yet.
        let incomplete = MappedRAMHeader(layout: try layout, generation: 1, complete: false, stateLength: 0)
        #expect(!(try MappedRAMHeader(decoding: incomplete.encode(), fileLength: try layout.stateOffset)).isComplete)
    }

    @Test("a block index round-trips through its bitmap and checksum table")
    func indexRoundTrip() throws {
        var entry = try layout.entries[1]
        var index = MappedRAMBlockIndex(pageCount: entry.pageCount)
        for page in [0, 1, 63, 64, 99] {
            index[page] = true
            index.checksums[page] = UInt64(page) &* 0x9e37_79b9_7f4a_7c15
        }
        #expect(index.presentCount == 5 && index[63] && !index[62])
        let (bitmap, sums) = index.encode()
        #expect(bitmap.count == 16 && sums.count == 800)
        entry.metadataChecksum = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums)
        #expect(try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry) == index)
    }

    @Test("a truncated header is refused, however short (a prefix too short for the block count included)")
    func truncatedHeader() throws {
        let bytes = try header.encode()
        for length in [8, 10, 23, 47, 48, 160, bytes.count - 1] {
            #expect(throws: ProtocolError.self, "\(length) bytes") { try MappedRAMHeader(decoding: Array(bytes.prefix(length)), fileLength: try fileLength) }
        }
        #expect(try refusal(Array(bytes.prefix(bytes.count - 1))).contains("the mapped-ram header (\(bytes.count - 1) of \(bytes.count) bytes)"))
        for length in [8, 12, 23] {
            #expect(throws: ProtocolError.truncated("the mapped-ram header (\(length) of at least 24 bytes)")) {
                try MappedRAMHeader.totalByteCount(prefix: Array(bytes.prefix(length)))
            }
        }
    }

    @Test("bad magic, bad checksum, unknown version and flags")
    func envelope() throws {
        let bytes = try header.encode()
        #expect(try refusal(patched(bytes, at: 0, Array("FERRYMIG".utf8))) == ProtocolError.badMagic.description)
        #expect(throws: ProtocolError.badMagic) { try MappedRAMHeader.totalByteCount(prefix: Array("QEVM".utf8) + bytes[4..<48]) }
        var corrupt = bytes
        corrupt[30] ^= 1        // the generation, checksum left as it was
        #expect(try refusal(corrupt).contains("the mapped-ram header's checksum does not match: the file is corrupt"))
        #expect(try refusal(patched(bytes, at: 8, [2, 0, 0, 0])).contains("stream version 2 is not supported (this Ferry reads 1...1)"))
        #expect(try refusal { $0.flags = 3 }.contains("mapped-ram header flags 0x3 (unknown bits 0x2)"))
        #expect(try refusal { $0.flags = 0x8000_0001 }.contains("unknown bits 0x80000000"))
    }

    @Test("a wrong page size, an absurd block count, a bad block size")
    func fields() throws {
        let bytes = try header.encode()
        #expect(try refusal(patched(bytes, at: 16, [0, 0x30, 0, 0])).contains("mapped-ram page size 12288 (a power of two from 4096 to 2 MiB)"))
        #expect(try refusal { $0.entries[1].pageSize = 8192 }
            .contains("block 'vga.ram' has 8192-byte pages in a file of 4096-byte pages"))
        for count: UInt32 in [0, 257, 100_000, .max] {
            var w = WireWriter()
            w.u32(count)
            let message = "mapped-ram block count \(count) (1 to 256)"
            #expect(try refusal(patched(bytes, at: 20, w.bytes)).contains(message))
            #expect(throws: ProtocolError.malformed(message)) { try MappedRAMHeader.totalByteCount(prefix: Array(patched(bytes, at: 20, w.bytes).prefix(48))) }
        }
        #expect(try refusal { $0.entries[0].byteCount = 4097 }.contains("block 'pc.ram' has size 4097"))
        #expect(try refusal { $0.entries[1].name = "pc.ram" }.contains("two blocks are named 'pc.ram'"))
        var padded = try header.encode()
        padded[48 + 2 + 10] = 1         // past "pc.ram" in its name field
        #expect(try refusal(patched(padded, at: 0, Array("FERRYMRF".utf8))).contains("block 'pc.ram': bytes after its name are not zero"))
    }

    @Test("regions overlapping the header or each other, misaligned, or past the end of the file")
    func regions() throws {
        #expect(try refusal { $0.entries[0].bitmapOffset = 64 }.contains("block 'pc.ram' bitmap at offset 64 overlaps the header"))
        #expect(try refusal { $0.entries[0].checksumsOffset = 0 }.contains("block 'pc.ram' checksum table at offset 0 overlaps the header"))
        #expect(try refusal { $0.entries[1].bitmapOffset = $0.entries[0].checksumsOffset + 8 }
            .contains("block 'vga.ram' bitmap at offset \(try layout.entries[0].checksumsOffset + 8) overlaps the block 'pc.ram' checksum table"))
        #expect(try refusal { $0.entries[1].pagesOffset = $0.entries[0].pagesOffset + (1 << 20) }
            .contains("block 'vga.ram' page area at offset \(try layout.entries[0].pagesOffset + (1 << 20)) overlaps the block 'pc.ram' page area"))
        #expect(try refusal { $0.entries[0].pagesOffset += 8 }
            .contains("block 'pc.ram' page area at offset \(try layout.entries[0].pagesOffset + 8) is not aligned to its 4096-byte pages"))
        #expect(try refusal { $0.entries[0].bitmapOffset += 4 }.contains("is not aligned to 8 bytes"))
        #expect(try refusal { $0.entries[0].pagesOffset = .max - 4095 }.contains("block 'pc.ram' page area overflows"))
        #expect(try refusal { $0.stateOffset = $0.entries[1].pagesOffset }.contains("device state at offset"))
        // An empty range overlaps nothing: a complete file's state must have bytes, wherever it claims to be.
        #expect(try refusal { $0.stateOffset = $0.entries[1].pagesOffset; $0.stateLength = 0 }
            == "malformed stream: a complete mapped-ram file with no device state")
        let end = try fileLength
        #expect(try refusal { $0.entries[1].checksumsOffset = end }.contains("lies past the end of the file"))
    }

    @Test("device state longer than the file is refused; an incomplete file's state is not looked at")
    func deviceStatePastTheEnd() throws {
        let bytes = try header.encode()
        let state = try layout.stateOffset
        #expect(try refusal(bytes, fileLength: try fileLength - 1)
            .contains("device state (\(Self.stateLength) bytes at offset \(state)) lies past the end of the file (\(try fileLength - 1) bytes)"))
        #expect(try refusal { $0.stateLength = .max }.contains("device state"))
        var incomplete = try header
        incomplete.flags = 0
        _ = try MappedRAMHeader(decoding: incomplete.encode(), fileLength: state)
    }

    @Test("block metadata: a checksum that does not match, bits past the block, a short table")
    func hostileMetadata() throws {
        var entry = try layout.entries[1]     // 100 pages: two bitmap words, 28 spare bits
        var index = MappedRAMBlockIndex(pageCount: entry.pageCount)
        index[99] = true
        var (bitmap, sums) = index.encode()
        entry.metadataChecksum = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums)
        _ = try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry)
        sums[8 * 99] ^= 1
        #expect(throws: ProtocolError.malformed("block 'vga.ram': the bitmap or checksum table does not match its checksum: the file is corrupt")) {
            try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry)
        }
        bitmap[15] = 0x80               // page 127 of a 100-page block
        entry.metadataChecksum = MappedRAMBlockIndex.checksum(bitmap: bitmap, checksums: sums)
        #expect(throws: ProtocolError.malformed("block 'vga.ram': the bitmap claims pages past the block's 100 pages")) {
            try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry)
        }
        #expect(throws: ProtocolError.truncated("block 'vga.ram' metadata")) {
            try MappedRAMBlockIndex(bitmap: bitmap, checksums: Array(sums.dropLast()), entry: entry)
        }
    }

    @Test("absent runs: word-sized and odd runs, a block that ends mid-word, the shortest run kept and one shorter dropped")
    func absentRuns() {
        /// Every run of clear bits at least `minimum` long, one page at a time.
        func naive(_ index: MappedRAMBlockIndex, atLeast minimum: Int) -> [Range<Int>] {
            var runs: [Range<Int>] = []
            var start: Int?
            for page in 0...index.pageCount {
                if page < index.pageCount, !index[page] { start = start ?? page; continue }
                if let first = start, page - first >= minimum { runs.append(first..<page) }
                start = nil
            }
            return runs
        }
        var index = MappedRAMBlockIndex(pageCount: 200)
        #expect(index.absentRuns(atLeast: 1) == [0..<200])
        for page in [3, 64, 65, 140] { index[page] = true }
        #expect(index.absentRuns(atLeast: 1) == [0..<3, 4..<64, 66..<140, 141..<200])
        #expect(index.absentRuns(atLeast: 59) == [4..<64, 66..<140, 141..<200])
        #expect(index.absentRuns(atLeast: 60) == [4..<64, 66..<140])
        #expect(index.absentRuns(atLeast: 61) == [66..<140])
        for page in 0..<200 { index[page] = true }
        #expect(index.absentRuns(atLeast: 1).isEmpty)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15      // a fixed sequence (xorshift), so a failure repeats
        func next() -> Double {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Double(state >> 11) / Double(1 << 53)
        }
        for pageCount in [1, 63, 64, 65, 128, 1000, 4099] {
            for density in [0.01, 0.5, 0.99] {
                var random = MappedRAMBlockIndex(pageCount: pageCount)
                // Long stretches of whole words, held and not, with scattered pages between.
                for page in 0..<pageCount where (page / 192) % 3 == 1 || ((page / 192) % 3 == 2 && next() < density) {
                    random[page] = true
                }
                for minimum in [1, 2, 64, 100] {
                    #expect(random.absentRuns(atLeast: minimum) == naive(random, atLeast: minimum), "\(pageCount) pages, density \(density), at least \(minimum)")
                }
            }
        }
    }
}
