import GuestMemory
import MigrationProtocol

/// One RAM block of a mapped-ram file being written, as the saver keeps it:
/// which pages the file holds (its bitmap) and their checksums.
///
/// The checksum table lives in memory of its own, page-aligned and untouched
/// until a writer records a page.  As an array, a 1.5 GiB guest's 3 MiB table
/// was fresh memory to zero before the first page went out (6 ms here), and
/// again in the page cache when the save's end wrote it (8 ms, at the pause);
/// from its own pages it goes out with the page data's O_DIRECT writes as it is.
struct MappedRAMSavedBlock {
    let pageCount: Int
    private(set) var present: [UInt64]
    /// Page `i`'s checksum at byte `8 i`, little-endian (the file's layout); 0 for a page the file does not hold.
    let checksums: HostMapping

    /// A block the file holds nothing of yet.
    init(pageCount: Int) throws(MigrationError) {
        self.pageCount = pageCount
        present = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        checksums = try Self.table(pageCount: pageCount)
    }

    /// The block as a complete file holds it (an incremental save continues it):
    /// `bitmap` (decoded and bounds-checked here) and the checksum table, read
    /// straight into the table's pages and checked against the entry's metadata checksum.
    init(entry: MappedRAMBlockEntry, bitmap: [UInt8], in file: any PageFile) throws(MigrationError) {
        do { present = try MappedRAMBlockIndex.presentWords(bitmap: bitmap, entry: entry) } catch { throw .stream(error) }
        pageCount = entry.pageCount
        checksums = try Self.table(pageCount: pageCount)
        let tableBytes = Int(entry.checksumBytes)
        guard tableBytes == pageCount * 8 else { throw .stream(.malformed("block '\(entry.name)': a checksum table of \(tableBytes) bytes")) }
        do {
            guard Self.asPages(tableBytes: tableBytes, at: entry.checksumsOffset, in: file) else {
                // Not whole pages with direct-io: read through the buffered descriptor by
                // the file's one decoder (which checks the metadata checksum), then copied in.
                let index = try MappedRAMBlockIndex(bitmap: bitmap, checksums: try file.read(tableBytes, at: entry.checksumsOffset), entry: entry)
                for (page, sum) in index.checksums.enumerated() { checksums.storeWord(sum, at: page * 8) }
                return
            }
            var list = ScatterList()
            list.append(checksums, offset: 0, count: tableBytes)
            try file.read(into: list, at: entry.checksumsOffset)
        } catch let error as ProtocolError { throw .stream(error) } catch let error as ChannelError { throw .channel(error) } catch {
            throw .state("\(error)")
        }
        let sum = checksums.withSpan(at: 0, count: tableBytes) { table in
            unsafe MappedRAMBlockIndex.checksum(bitmap: bitmap.span.bytes, checksums: table.bytes)     // SAFETY: UInt8 has no padding
        }
        guard sum == entry.metadataChecksum else {
            throw .stream(.malformed("block '\(entry.name)': the bitmap or checksum table does not match its checksum: the file is corrupt"))
        }
    }

    /// Page-aligned memory for `pageCount` checksums, zero until written.
    private static func table(pageCount: Int) throws(MigrationError) -> HostMapping {
        let bytes = (pageCount * 8 + PageSize.base.byteCount - 1) / PageSize.base.byteCount * PageSize.base.byteCount
        do { return try HostMapping(byteCount: UInt64(max(bytes, PageSize.base.byteCount)), backend: .anon) } catch {
            throw .state("cannot map a checksum table of \(bytes) bytes: \(error)")
        }
    }

    /// Whether a table of `tableBytes` at `offset` can be written and read like
    /// page data (`PageFile.write(_:at:)` with a gather list): always without
    /// direct-io, and with it when both are whole pages (O_DIRECT's alignment).
    static func asPages(tableBytes: Int, at offset: UInt64, in file: any PageFile) -> Bool {
        let page = PageSize.base.byteCount
        return !file.isDirect || (tableBytes % page == 0 && offset % UInt64(page) == 0)
    }

    subscript(page: Int) -> Bool { MappedRAMBlockIndex.isPresent(page, in: present) }

    var presentCount: Int { present.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// The file now holds `page`, whose data has `checksum`.
    mutating func hold(_ page: Int, checksum: UInt64) {
        present[page >> 6] |= 1 << UInt64(page & 63)
        checksums.storeWord(checksum, at: page * 8)
    }

    /// The file no longer holds `page` (it is zero now).
    mutating func drop(_ page: Int) {
        guard self[page] else { return }
        present[page >> 6] &= ~(1 << UInt64(page & 63))
        checksums.storeWord(0, at: page * 8)
    }

    func absentRuns(atLeast minimum: Int) -> [Range<Int>] {
        MappedRAMBlockIndex.absentRuns(in: present, pageCount: pageCount, atLeast: minimum)
    }

    /// Writes the bitmap (buffered) and the checksum table (straight from its
    /// pages, `asPages`, or else through a copy) at `entry`'s offsets; returns
    /// the metadata checksum over both.
    func write(to file: any PageFile, entry: MappedRAMBlockEntry) throws(ChannelError) -> UInt64 {
        let tableBytes = pageCount * 8
        let bitmap = MappedRAMBlockIndex.wireBytes(of: present)
        try file.write(bitmap, at: entry.bitmapOffset)
        if Self.asPages(tableBytes: tableBytes, at: entry.checksumsOffset, in: file) {
            var list = GatherList()
            list.append(checksums, offset: 0, count: tableBytes)
            try file.write(list, at: entry.checksumsOffset)
        } else {
            let copy = checksums.withSpan(at: 0, count: tableBytes) { table in
                var bytes: [UInt8] = []
                bytes.reserveCapacity(table.count)
                for i in table.indices { bytes.append(table[i]) }
                return bytes
            }
            try file.write(copy, at: entry.checksumsOffset)
        }
        return checksums.withSpan(at: 0, count: tableBytes) { table in
            unsafe MappedRAMBlockIndex.checksum(bitmap: bitmap.span.bytes, checksums: table.bytes)     // SAFETY: UInt8 has no padding
        }
    }
}
