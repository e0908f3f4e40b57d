/// Page records, many to a `pages` frame:
///
///     payload := count u32 | record*
///     record  := kind u8 | flags u8 | [block u16] | offset u64 | [page bytes]
///
/// `kind` is data (the page follows, one block page size long) or zero; flag
/// bit 0 (continuation) means "same block as the previous record in this
/// frame", and then the block index is omitted.  Offsets are bytes into the
/// block and must be page-aligned.
public enum PageRecordKind: UInt8, Sendable {
    case invalid = 0
    case data = 1
    case zero = 2
}

public struct PageRecord: Equatable, Sendable {
    public let block: Int
    public let offset: UInt64
    public let kind: PageRecordKind
    /// The page's bytes for `.data`; empty for `.zero`.
    public let data: ArraySlice<UInt8>

    public init(block: Int, offset: UInt64, kind: PageRecordKind, data: ArraySlice<UInt8> = []) {
        self.block = block
        self.offset = offset
        self.kind = kind
        self.data = data
    }
}

/// Builds one `pages` frame payload.
public struct PageBatchWriter: Sendable {
    private var writer: WireWriter
    private var lastBlock: Int?
    public private(set) var count: UInt32 = 0

    public init(capacity: Int = 0) {
        writer = WireWriter(capacity: capacity)
        writer.u32(0)
    }

    public var byteCount: Int { writer.bytes.count }

    public mutating func append(block: Int, offset: UInt64, page: ArraySlice<UInt8>?) {
        appendHeader(block: block, offset: offset, kind: page == nil ? .zero : .data)
        if let page { writer.append(page) }
    }

    /// Appends a data record whose page bytes `fill` appends to the payload
    /// (straight from guest memory, without an intermediate copy).
    public mutating func appendData(block: Int, offset: UInt64, fill: (inout [UInt8]) -> Void) {
        appendHeader(block: block, offset: offset, kind: .data)
        writer.withBytes(fill)
    }

    /// Starts a new batch, keeping the buffer's capacity.
    public mutating func reset() {
        writer.removeAll()
        writer.u32(0)
        lastBlock = nil
        count = 0
    }

    private mutating func appendHeader(block: Int, offset: UInt64, kind: PageRecordKind) {
        writer.u8(kind.rawValue)
        if lastBlock == block {
            writer.u8(1)
        } else {
            writer.u8(0)
            writer.u16(UInt16(block))
            lastBlock = block
        }
        writer.u64(offset)
        count += 1
    }

    /// The finished payload, with the record count patched in.
    public func payload() -> [UInt8] {
        var bytes = writer.bytes
        for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: count >> (8 * UInt32(i))) }
        return bytes
    }

    /// Patches the record count in and lends the payload to `body` without copying it.
    public mutating func withPayload<R>(_ body: ([UInt8]) throws -> R) rethrows -> R {
        let count = self.count
        writer.withBytes { bytes in
            for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: count >> (8 * UInt32(i))) }
        }
        return try body(writer.bytes)
    }
}

/// Decodes a `pages` payload, checking every record against the destination's
/// layout before returning it: the block exists, the offset is aligned and the
/// page lies wholly inside the block.  A hostile stream gets an error, never a
/// record that would write outside guest RAM.
public struct PageBatchReader: Sendable {
    let layout: [MigrationConfiguration.Block]

    public init(layout: [MigrationConfiguration.Block]) { self.layout = layout }

    public func records(in payload: [UInt8]) throws(ProtocolError) -> [PageRecord] {
        var records: [PageRecord] = []
        try forEachRecord(in: payload) { block, offset, kind, data throws(ProtocolError) in
            records.append(PageRecord(block: block, offset: offset, kind: kind, data: payload[data]))
        }
        return records
    }

    /// Validates each record and hands it to `body` as (block index, byte
    /// offset, kind, range of the page bytes in `payload`), without copying.
    /// A record reaches `body` only once its block, offset and length are checked.
    public func forEachRecord(in payload: [UInt8],
                              _ body: (Int, UInt64, PageRecordKind, Range<Int>) throws(ProtocolError) -> Void) throws(ProtocolError) {
        var r = WireReader(payload)
        let count = try r.u32("record count")
        // Each record is at least 10 bytes (a zero record continuing a block): a count beyond that is a lie.
        guard UInt64(count) * 10 <= UInt64(r.remaining) else { throw .malformed("record count \(count) exceeds the frame") }
        var current: Int?
        for index in 0..<Int(count) {
            let rawKind = try r.u8("record \(index) kind")
            guard let kind = PageRecordKind(rawValue: rawKind), kind != .invalid else { throw .malformed("record \(index) has kind \(rawKind)") }
            let flags = try r.u8("record \(index) flags")
            guard flags & ~1 == 0 else { throw .malformed("record \(index) has flags \(flags)") }
            if flags & 1 == 0 {
                let block = try r.u16("record \(index) block")
                guard Int(block) < layout.count else { throw .unknownBlock(block) }
                current = Int(block)
            }
            guard let block = current else { throw .malformed("record \(index) continues a block but none came before") }
            let offset = try r.u64("record \(index) offset")
            let pageSize = UInt64(layout[block].pageSize)
            guard offset % pageSize == 0, offset <= layout[block].byteCount - pageSize else {
                throw .pageOutsideBlock(block: layout[block].name, offset: offset)
            }
            let data = kind == .data ? try r.range(Int(pageSize), "record \(index) page") : r.index..<r.index
            try body(block, offset, kind, data)
        }
        guard r.isAtEnd else { throw .malformed("\(r.remaining) bytes after the last page record") }
    }
}
