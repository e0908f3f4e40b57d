/// Ferry's mapped-ram file (capability `mapped-ram`): every RAM page has a
/// fixed place in the file, so parallel writers and readers need no order, a
/// live save rewrites a re-dirtied page in place (the file never outgrows the
/// guest), and page data is aligned for O_DIRECT.  All offsets are from the
/// file's base (`file:PATH,offset=N`), little-endian:
///
///     0                  header: magic "FERRYMRF", version, flags, page size,
///                        block count, generation, state offset and length,
///                        one entry per block, checksum          (4 KiB-aligned region)
///     per block          bitmap of pages present (one bit per page, u64 words),
///                        then one u64 checksum per page          (each 4 KiB-aligned)
///     per block          the page area: page N at pagesOffset + N * pageSize
///                        (1 MiB-aligned; absent pages read as zero:
///                        holes, or blocks allocated and never written)
///     stateOffset        the device-state stream: stream header, configuration,
///                        channel plan (mapped-ram flag), sections, end
///
/// `MappedRAMLayout` computes every offset from the blocks; `MappedRAMHeader`
/// is the one decoder for the header, and checks every field before an offset
/// is used.
public enum MappedRAMFormat {
    public static let magic: [UInt8] = Array("FERRYMRF".utf8)
    public static let version: UInt32 = 1
    public static let supportedVersions: ClosedRange<UInt32> = 1...1
    /// Metadata regions (header, bitmaps, checksum tables, state) start on this boundary.
    public static let metadataAlignment: UInt64 = 4096
    /// Page areas start on this boundary (QEMU aligns its to 1 MiB too).
    public static let pageAreaAlignment: UInt64 = 1 << 20
    /// Header bytes before the block entries.
    public static let fixedHeaderBytes = 48
    public static let entryBytes = 112
    /// A block name is at most this long (the entry's fixed name field).
    public static let maximumNameBytes = 62
    /// Flag: the save completed (bitmaps, checksums and state are consistent).
    public static let completeFlag: UInt32 = 1

    static func align(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
        (value + alignment - 1) / alignment * alignment
    }
}

/// Where one block's pieces lie in the file.
public struct MappedRAMBlockEntry: Equatable, Sendable {
    public var name: String
    public var byteCount: UInt64
    public var pageSize: UInt32
    public var bitmapOffset: UInt64
    public var checksumsOffset: UInt64
    public var pagesOffset: UInt64
    /// FrameChecksum over the bitmap's bytes followed by the checksum table's.
    public var metadataChecksum: UInt64

    public var pageCount: Int { Int(byteCount / UInt64(pageSize)) }
    /// u64 words of the present bitmap.
    public var bitmapWords: Int { (pageCount + 63) / 64 }
    public var bitmapBytes: UInt64 { UInt64(bitmapWords * 8) }
    public var checksumBytes: UInt64 { UInt64(pageCount * 8) }
}

/// The offsets a save uses for a set of blocks: computed, never read, so a
/// writer and a reader of the same blocks agree by construction.
public struct MappedRAMLayout: Equatable, Sendable {
    public let pageSize: UInt32
    public let entries: [MappedRAMBlockEntry]
    public let headerBytes: UInt64
    public let stateOffset: UInt64

    public init(blocks: [MigrationConfiguration.Block]) throws(ProtocolError) {
        guard let first = blocks.first, blocks.count <= MigrationConfiguration.maximumBlocks else {
            throw .malformed("a mapped-ram file holds 1 to \(MigrationConfiguration.maximumBlocks) RAM blocks")
        }
        pageSize = first.pageSize
        headerBytes = UInt64(MappedRAMFormat.fixedHeaderBytes + blocks.count * MappedRAMFormat.entryBytes + 8)
        var position = MappedRAMFormat.align(headerBytes, MappedRAMFormat.metadataAlignment)
        var entries: [MappedRAMBlockEntry] = []
        for block in blocks {
            guard block.name.utf8.count <= MappedRAMFormat.maximumNameBytes else {
                throw .malformed("RAM block name '\(block.name)' is longer than \(MappedRAMFormat.maximumNameBytes) bytes")
            }
            guard block.pageSize == pageSize else { throw .malformed("RAM blocks with different migration page sizes") }
            var entry = MappedRAMBlockEntry(name: block.name, byteCount: block.byteCount, pageSize: block.pageSize,
                                            bitmapOffset: position, checksumsOffset: 0, pagesOffset: 0, metadataChecksum: 0)
            entry.checksumsOffset = MappedRAMFormat.align(position + entry.bitmapBytes, MappedRAMFormat.metadataAlignment)
            position = MappedRAMFormat.align(entry.checksumsOffset + entry.checksumBytes, MappedRAMFormat.metadataAlignment)
            entries.append(entry)
        }
        for index in entries.indices {
            position = MappedRAMFormat.align(position, MappedRAMFormat.pageAreaAlignment)
            entries[index].pagesOffset = position
            position += entries[index].byteCount
        }
        self.entries = entries
        stateOffset = MappedRAMFormat.align(position, MappedRAMFormat.metadataAlignment)
    }

    /// The file offset of `page` of block `block`.
    public func pageOffset(block: Int, page: Int) -> UInt64 {
        entries[block].pagesOffset + UInt64(page) * UInt64(pageSize)
    }
}

/// The file header: everything needed to find and check the rest.
public struct MappedRAMHeader: Equatable, Sendable {
    public var flags: UInt32
    public var pageSize: UInt32
    /// Counts saves into this file: an incremental save continues a file only
    /// from the generation it last wrote.
    public var generation: UInt64
    public var stateOffset: UInt64
    public var stateLength: UInt64
    public var entries: [MappedRAMBlockEntry]

    public init(layout: MappedRAMLayout, generation: UInt64, complete: Bool, stateLength: UInt64) {
        flags = complete ? MappedRAMFormat.completeFlag : 0
        pageSize = layout.pageSize
        self.generation = generation
        stateOffset = layout.stateOffset
        self.stateLength = stateLength
        entries = layout.entries
    }

    public var isComplete: Bool { flags & MappedRAMFormat.completeFlag != 0 }

    /// Bytes of the encoded header (before its region's padding).
    public static func byteCount(blocks: Int) -> Int {
        MappedRAMFormat.fixedHeaderBytes + blocks * MappedRAMFormat.entryBytes + 8
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: Self.byteCount(blocks: entries.count))
        w.append(MappedRAMFormat.magic)
        w.u32(MappedRAMFormat.version)
        w.u32(flags)
        w.u32(pageSize)
        w.u32(UInt32(entries.count))
        w.u64(generation)
        w.u64(stateOffset)
        w.u64(stateLength)
        for entry in entries {
            let name = Array(entry.name.utf8)
            w.u16(UInt16(name.count))
            w.append(name)
            w.append(repeatElement(UInt8(0), count: MappedRAMFormat.maximumNameBytes - name.count))
            w.u64(entry.byteCount)
            w.u32(entry.pageSize)
            w.u32(0)
            w.u64(entry.bitmapOffset)
            w.u64(entry.checksumsOffset)
            w.u64(entry.pagesOffset)
            w.u64(entry.metadataChecksum)
        }
        let sum = FrameChecksum.of(w.bytes[...])
        w.u64(sum)
        return w.bytes
    }

    /// Whether `bytes` start like a mapped-ram file (to tell it from a stream file).
    public static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.count >= MappedRAMFormat.magic.count && Array(bytes.prefix(MappedRAMFormat.magic.count)) == MappedRAMFormat.magic
    }

    /// How many bytes to read to decode a header whose first `fixedHeaderBytes` are `prefix`.
    public static func totalByteCount(prefix: [UInt8]) throws(ProtocolError) -> Int {
        guard hasMagic(prefix) else { throw .badMagic }
        // WireReader trusts its range: a prefix shorter than the count's end must be refused here.
        guard prefix.count >= 24 else { throw .truncated("the mapped-ram header (\(prefix.count) of at least 24 bytes)") }
        var r = WireReader(prefix, range: 20..<24)
        let count = Int(try r.u32("block count"))
        guard (1...MigrationConfiguration.maximumBlocks).contains(count) else { throw .malformed("mapped-ram block count \(count) (1 to \(MigrationConfiguration.maximumBlocks))") }
        return byteCount(blocks: count)
    }

    /// Decodes and checks a header of a file `fileLength` bytes long (from the
    /// base): magic, version, checksum, flags, then every block's regions:
    /// aligned, inside the file, after the header, and disjoint from each other
    /// and from the state.
    public init(decoding bytes: [UInt8], fileLength: UInt64) throws(ProtocolError) {
        var r = WireReader(bytes)
        guard Self.hasMagic(bytes) else { throw .badMagic }
        _ = try r.bytes(MappedRAMFormat.magic.count, "magic")
        let version = try r.u32("mapped-ram version")
        guard MappedRAMFormat.supportedVersions.contains(version) else {
            throw .unsupportedVersion(version, supported: MappedRAMFormat.supportedVersions)
        }
        flags = try r.u32("flags")
        guard flags & ~MappedRAMFormat.completeFlag == 0 else {
            throw .malformed("mapped-ram header flags 0x\(String(flags, radix: 16)) (unknown bits 0x\(String(flags & ~MappedRAMFormat.completeFlag, radix: 16)))")
        }
        pageSize = try r.u32("page size")
        guard pageSize >= 4096, pageSize <= 1 << 21, pageSize & (pageSize - 1) == 0 else {
            throw .malformed("mapped-ram page size \(pageSize) (a power of two from 4096 to 2 MiB)")
        }
        let count = Int(try r.u32("block count"))
        guard (1...MigrationConfiguration.maximumBlocks).contains(count) else { throw .malformed("mapped-ram block count \(count) (1 to \(MigrationConfiguration.maximumBlocks))") }
        let length = Self.byteCount(blocks: count)
        guard bytes.count >= length else { throw .truncated("the mapped-ram header (\(bytes.count) of \(length) bytes)") }
        var trailer = WireReader(bytes, range: length - 8..<length)
        let stored = try trailer.u64("header checksum")
        guard FrameChecksum.of(bytes[0..<length - 8]) == stored else {
            throw .malformed("the mapped-ram header's checksum does not match: the file is corrupt")
        }
        generation = try r.u64("generation")
        stateOffset = try r.u64("state offset")
        stateLength = try r.u64("state length")
        entries = []
        for index in 0..<count {
            let nameLength = Int(try r.u16("block \(index) name length"))
            guard nameLength <= MappedRAMFormat.maximumNameBytes else { throw .malformed("block \(index) name length \(nameLength)") }
            let raw = try r.bytes(MappedRAMFormat.maximumNameBytes, "block \(index) name")
            guard let name = String(validating: raw.prefix(nameLength), as: UTF8.self) else { throw .malformed("block \(index) name is not UTF-8") }
            guard raw.dropFirst(nameLength).allSatisfy({ $0 == 0 }) else { throw .malformed("block '\(name)': bytes after its name are not zero") }
            guard !entries.contains(where: { $0.name == name }) else { throw .malformed("two blocks are named '\(name)'") }
            let byteCount = try r.u64("block \(index) size")
            let blockPageSize = try r.u32("block \(index) page size")
            guard try r.u32("block \(index) reserved") == 0 else { throw .malformed("block '\(name)': its reserved field is not zero") }
            let entry = MappedRAMBlockEntry(name: name, byteCount: byteCount, pageSize: blockPageSize,
                                            bitmapOffset: try r.u64("block \(index) bitmap offset"),
                                            checksumsOffset: try r.u64("block \(index) checksums offset"),
                                            pagesOffset: try r.u64("block \(index) pages offset"),
                                            metadataChecksum: try r.u64("block \(index) metadata checksum"))
            guard blockPageSize == pageSize else {
                throw .malformed("block '\(name)' has \(blockPageSize)-byte pages in a file of \(pageSize)-byte pages")
            }
            guard byteCount > 0, byteCount % UInt64(pageSize) == 0, byteCount <= 1 << 46 else {
                throw .malformed("block '\(name)' has size \(byteCount)")
            }
            entries.append(entry)
        }
        try checkRegions(headerBytes: UInt64(length), fileLength: fileLength)
    }

    /// Every region aligned, inside the file, past the header, and overlapping no other.
    func checkRegions(headerBytes: UInt64, fileLength: UInt64) throws(ProtocolError) {
        var regions: [(name: String, range: Range<UInt64>)] = [("header", 0..<headerBytes)]
        func add(_ name: String, _ offset: UInt64, _ length: UInt64, alignment: UInt64) throws(ProtocolError) {
            guard offset % alignment == 0 else { throw .malformed("\(name) at offset \(offset) is not aligned to \(alignment) bytes") }
            let (end, overflow) = offset.addingReportingOverflow(length)
            guard !overflow, end <= fileLength else {
                throw .malformed("\(name) (\(length) bytes at offset \(offset)) lies past the end of the file (\(fileLength) bytes)")
            }
            if let other = regions.first(where: { $0.range.overlaps(offset..<end) }) {
                throw .malformed("\(name) at offset \(offset) overlaps the \(other.name)")
            }
            regions.append((name, offset..<end))
        }
        for entry in entries {
            try add("block '\(entry.name)' bitmap", entry.bitmapOffset, entry.bitmapBytes, alignment: 8)
            try add("block '\(entry.name)' checksum table", entry.checksumsOffset, entry.checksumBytes, alignment: 8)
            // The page area may end past the file's length: trailing absent pages are a hole.
            let (end, overflow) = entry.pagesOffset.addingReportingOverflow(entry.byteCount)
            guard entry.pagesOffset % UInt64(pageSize) == 0 else {
                throw .malformed("block '\(entry.name)' page area at offset \(entry.pagesOffset) is not aligned to its \(pageSize)-byte pages")
            }
            guard !overflow else { throw .malformed("block '\(entry.name)' page area overflows") }
            if let other = regions.first(where: { $0.range.overlaps(entry.pagesOffset..<end) }) {
                throw .malformed("block '\(entry.name)' page area at offset \(entry.pagesOffset) overlaps the \(other.name)")
            }
            regions.append(("block '\(entry.name)' page area", entry.pagesOffset..<end))
        }
        if isComplete {
            // An empty range would overlap nothing, wherever it lay; a save always writes state.
            guard stateLength > 0 else { throw .malformed("a complete mapped-ram file with no device state") }
            try add("device state", stateOffset, stateLength, alignment: 8)
        }
    }

    /// Checks the header's blocks against the RAM this machine has.
    public func check(against blocks: [MigrationConfiguration.Block]) throws(ProtocolError) {
        guard entries.map(\.name) == blocks.map(\.name) else {
            throw .configurationMismatch("the file has RAM blocks \(entries.map(\.name)), this machine \(blocks.map(\.name))")
        }
        for (entry, block) in zip(entries, blocks) {
            guard entry.byteCount == block.byteCount else {
                throw .configurationMismatch("RAM block '\(block.name)' is \(entry.byteCount) bytes in the file, \(block.byteCount) here")
            }
            guard entry.pageSize == block.pageSize else {
                throw .configurationMismatch("RAM block '\(block.name)' has \(entry.pageSize)-byte pages in the file, \(block.pageSize) here")
            }
        }
    }
}

/// One block's metadata: which pages the file holds, and each one's checksum.
public struct MappedRAMBlockIndex: Equatable, Sendable {
    public var present: [UInt64]
    public var checksums: [UInt64]
    public let pageCount: Int

    public init(pageCount: Int) {
        self.pageCount = pageCount
        present = Array(repeating: 0, count: (pageCount + 63) / 64)
        checksums = Array(repeating: 0, count: pageCount)
    }

    public subscript(page: Int) -> Bool {
        get { Self.isPresent(page, in: present) }
        set {
            if newValue { present[page >> 6] |= 1 << UInt64(page & 63) } else { present[page >> 6] &= ~(1 << UInt64(page & 63)) }
        }
    }

    public var presentCount: Int { present.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// The runs of pages the file does not hold that are at least `minimum` pages long, in order.
    public func absentRuns(atLeast minimum: Int) -> [Range<Int>] {
        Self.absentRuns(in: present, pageCount: pageCount, atLeast: minimum)
    }

    /// The runs of pages of a `pageCount`-page block that the bitmap `present`
    /// (as `presentWords` decodes it) does not hold, at least `minimum` pages long, in order.
    public static func absentRuns(in present: [UInt64], pageCount: Int, atLeast minimum: Int) -> [Range<Int>] {
        precondition(present.count == (pageCount + 63) / 64)
        var runs: [Range<Int>] = []
        var start: Int?        // where the run of absent pages being walked began
        func held(at page: Int) {
            if let first = start, page - first >= minimum { runs.append(first..<page) }
            start = nil
        }
        var page = 0
        while page < pageCount {
            let word = present[page >> 6]
            if page & 63 == 0, page + 64 <= pageCount, word == 0 || word == ~0 {     // a whole word at once
                if word == 0 { start = start ?? page } else { held(at: page) }
                page += 64
                continue
            }
            if Self.isPresent(page, in: present) { held(at: page) } else { start = start ?? page }
            page += 1
        }
        held(at: pageCount)
        return runs
    }

    /// A bitmap's words as the file holds them (little-endian).
    public static func wireBytes(of words: [UInt64]) -> [UInt8] {
        var w = WireWriter(capacity: words.count * 8)
        for word in words { w.u64(word) }
        return w.bytes
    }

    /// The bitmap's bytes then the checksum table's, as the file holds them.
    public func encode() -> (bitmap: [UInt8], checksums: [UInt8]) {
        var b = WireWriter(capacity: present.count * 8)
        for word in present { b.u64(word) }
        var c = WireWriter(capacity: checksums.count * 8)
        for sum in checksums { c.u64(sum) }
        return (b.bytes, c.bytes)
    }

    /// The metadata checksum of a block: over its bitmap then its checksum table.
    public static func checksum(bitmap: RawSpan, checksums: RawSpan) -> UInt64 {
        FrameChecksum.of(bitmap, then: checksums)
    }

    public static func checksum(bitmap: [UInt8], checksums: [UInt8]) -> UInt64 {
        // SAFETY: a span's bytes are unsafe only for elements with padding; UInt8 has none.
        checksum(bitmap: unsafe bitmap.span.bytes, checksums: unsafe checksums.span.bytes)
    }

    /// Decodes and checks one block's metadata against its entry: the
    /// metadata checksum and no bit past the block's last page.
    public init(bitmap: [UInt8], checksums table: [UInt8], entry: MappedRAMBlockEntry) throws(ProtocolError) {
        guard bitmap.count == Int(entry.bitmapBytes), table.count == Int(entry.checksumBytes) else {
            throw .truncated("block '\(entry.name)' metadata")
        }
        guard Self.checksum(bitmap: bitmap, checksums: table) == entry.metadataChecksum else {
            throw .malformed("block '\(entry.name)': the bitmap or checksum table does not match its checksum: the file is corrupt")
        }
        self.init(pageCount: entry.pageCount)
        present = try Self.presentWords(bitmap: bitmap, entry: entry)
        var c = WireReader(table)
        for i in checksums.indices { checksums[i] = try c.u64("page checksum") }
    }

    /// Decodes one block's bitmap alone, refusing a bit past the block's last
    /// page; the metadata checksum, which covers the checksum table too, is
    /// checked once that table is read (`init(bitmap:checksums:entry:)`).
    public static func presentWords(bitmap: [UInt8], entry: MappedRAMBlockEntry) throws(ProtocolError) -> [UInt64] {
        guard bitmap.count == Int(entry.bitmapBytes) else { throw .truncated("block '\(entry.name)' bitmap") }
        var words = [UInt64](repeating: 0, count: entry.bitmapWords)
        var r = WireReader(bitmap)
        for i in words.indices { words[i] = try r.u64("bitmap word") }
        let spare = words.count * 64 - entry.pageCount
        if spare > 0, words[words.count - 1] >> UInt64(64 - spare) != 0 {
            throw .malformed("block '\(entry.name)': the bitmap claims pages past the block's \(entry.pageCount) pages")
        }
        return words
    }

    /// Whether `page` is present in `words` (a bitmap as `presentWords` decodes it).
    public static func isPresent(_ page: Int, in words: [UInt64]) -> Bool { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }
}
