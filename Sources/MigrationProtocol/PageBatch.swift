/// Page records, many to a `pages` frame.  The payload is the index; the page
/// bytes follow the frame as its tail, so a receiver checks the index first
/// and then reads the pages straight into guest RAM:
///
///     payload := count u32 | flags u16 | reserved u16 | record*
///     record  := kind u8 | reserved u8 | block u16 | reserved u32 | offset u64 | checksum u64
///     tail    := the data records' pages, in order (flags bit 0 clear), or one
///                zstd frame that decompresses to exactly them (bit 0 set)
///
/// `kind` is data or zero; a zero record's checksum is 0.  A data record's
/// checksum is `FrameChecksum` of its page, computed by the sender in the same
/// pass that looks for zero pages.  Offsets are bytes into the block and must
/// be page-aligned.
public enum PageRecordKind: UInt8, Sendable {
    case invalid = 0
    case data = 1
    case zero = 2
}

public struct PageRecord: Equatable, Sendable {
    public let block: Int
    public let offset: UInt64
    public let kind: PageRecordKind
    /// `FrameChecksum` of the page's bytes for `.data`; 0 for `.zero`.
    public let checksum: UInt64

    public init(block: Int, offset: UInt64, kind: PageRecordKind, checksum: UInt64 = 0) {
        (self.block, self.offset, self.kind, self.checksum) = (block, offset, kind, checksum)
    }
}

public enum PageFrame {
    public static let headerByteCount = 8
    public static let recordByteCount = 24
    /// Bound on records in one frame (a sender puts at most 256 in one).
    public static let maximumRecords = 1 << 16
    /// Flag bit 0: the tail is one zstd frame.
    public static let compressedFlag: UInt16 = 1
    /// Bound on the page bytes one compressed frame may hold (a sender puts
    /// 1 MiB in one): the receiver allocates what a frame claims to decompress
    /// to before it has the tail, so a claim is held to what a sender does.
    public static let maximumCompressedBytes = 4 << 20

    /// The largest tail `n` bytes of pages may compress to (zstd's worst case is
    /// a little more than the input).
    public static func compressedBound(_ n: Int) -> Int { n + n / 128 + 4096 }
}

/// Builds the index of one `pages` frame (the sender adds the tail itself).
public struct PageIndexBuilder: Sendable {
    private var writer: WireWriter
    public private(set) var count = 0
    public private(set) var dataCount = 0

    public init(capacity: Int = 256) {
        writer = WireWriter(capacity: PageFrame.headerByteCount + capacity * PageFrame.recordByteCount)
        reset()
    }

    public mutating func append(block: Int, offset: UInt64, kind: PageRecordKind, checksum: UInt64 = 0) {
        writer.u8(kind.rawValue)
        writer.u8(0)
        writer.u16(UInt16(block))
        writer.u32(0)
        writer.u64(offset)
        writer.u64(kind == .data ? checksum : 0)
        count += 1
        if kind == .data { dataCount += 1 }
    }

    public mutating func reset() {
        writer.removeAll()
        writer.u32(0)
        writer.u16(0)
        writer.u16(0)
        count = 0
        dataCount = 0
    }

    /// The finished payload: record count and flags patched in.
    public mutating func payload(compressed: Bool = false) -> [UInt8] {
        let count = self.count
        let flags = compressed ? PageFrame.compressedFlag : 0
        writer.withBytes { bytes in
            for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: count >> (8 * i)) }
            bytes[4] = UInt8(truncatingIfNeeded: flags)
            bytes[5] = UInt8(truncatingIfNeeded: flags >> 8)
        }
        return writer.bytes
    }
}

/// A whole `pages` frame built from page bytes in hand (tests and tools; the
/// engine's senders point the tail at guest memory instead).
public struct PageBatchWriter: Sendable {
    private var index = PageIndexBuilder()
    private var data: [UInt8] = []

    public init() {}

    public var count: Int { index.count }

    /// A data record for `page` (checksum computed here), or a zero record for `nil`.
    public mutating func append(block: Int, offset: UInt64, page: ArraySlice<UInt8>?) {
        if let page {
            index.append(block: block, offset: offset, kind: .data, checksum: FrameChecksum.of(page))
            data.append(contentsOf: page)
        } else {
            index.append(block: block, offset: offset, kind: .zero)
        }
    }

    public mutating func payload() -> [UInt8] { index.payload() }
    public var tail: [UInt8] { data }
}

/// A checked `pages` index: every record's block, offset and kind, and what
/// the tail must hold.
public struct PageIndex: Sendable {
    public let records: [PageRecord]
    public let compressed: Bool
    /// Bytes of page data the records describe (the tail's length when not
    /// compressed; what it must decompress to when compressed).
    public let dataByteCount: Int

    /// Decodes a `pages` payload and checks it against the destination's layout
    /// and the frame's tail length before anything is written: every block
    /// exists, every offset is aligned and its page lies wholly inside the block.
    /// A hostile stream gets an error, never a record that would write outside guest RAM.
    public init(decoding payload: [UInt8], tailLength: UInt64, layout: [MigrationConfiguration.Block]) throws(ProtocolError) {
        var r = WireReader(payload)
        let count = Int(try r.u32("record count"))
        let flags = try r.u16("page frame flags")
        guard flags & ~PageFrame.compressedFlag == 0 else { throw .malformed("page frame flags \(flags)") }
        guard try r.u16("page frame reserved") == 0 else { throw .reservedFieldNotZero }
        guard count <= PageFrame.maximumRecords, count * PageFrame.recordByteCount == r.remaining else {
            throw .malformed("record count \(count) does not match the \(r.remaining) bytes of records")
        }
        var records: [PageRecord] = []
        records.reserveCapacity(count)
        var data = 0
        for index in 0..<count {
            let rawKind = try r.u8("record \(index) kind")
            guard let kind = PageRecordKind(rawValue: rawKind), kind != .invalid else { throw .malformed("record \(index) has kind \(rawKind)") }
            guard try r.u8("record \(index) reserved") == 0 else { throw .reservedFieldNotZero }
            let block = try r.u16("record \(index) block")
            guard Int(block) < layout.count else { throw .unknownBlock(block) }
            guard try r.u32("record \(index) reserved") == 0 else { throw .reservedFieldNotZero }
            let offset = try r.u64("record \(index) offset")
            let checksum = try r.u64("record \(index) checksum")
            let pageSize = UInt64(layout[Int(block)].pageSize)
            guard offset % pageSize == 0, offset <= layout[Int(block)].byteCount - pageSize else {
                throw .pageOutsideBlock(block: layout[Int(block)].name, offset: offset)
            }
            if kind == .data { data += Int(pageSize) } else if checksum != 0 { throw .malformed("zero record \(index) has a checksum") }
            records.append(PageRecord(block: Int(block), offset: offset, kind: kind, checksum: checksum))
        }
        let compressed = flags & PageFrame.compressedFlag != 0
        if compressed {
            guard data <= PageFrame.maximumCompressedBytes else {
                throw .malformed("a compressed frame of \(data) bytes of pages (at most \(PageFrame.maximumCompressedBytes))")
            }
            guard data > 0, tailLength > 0, tailLength <= UInt64(PageFrame.compressedBound(data)) else {
                throw .malformed("a compressed tail of \(tailLength) bytes for \(data) bytes of pages")
            }
        } else {
            guard tailLength == UInt64(data) else { throw .malformed("a tail of \(tailLength) bytes for \(data) bytes of pages") }
        }
        (self.records, self.compressed, self.dataByteCount) = (records, compressed, data)
    }
}
