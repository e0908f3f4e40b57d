import Compression
import Migration
import MigrationProtocol

/// The pages of a stream's `pages` frames, counted per block and checked page
/// by page, with the destination's rule (`RAMMigration.loadPages`): a copy
/// that does not match its checksum makes its page suspect until a later copy
/// that matches (or a zero record) clears it; a page still suspect at the end
/// is corrupt.  Only suspect pages are remembered, so memory follows the
/// corruption found, not the RAM a hostile configuration claims.
struct PageTally {
    struct PageKey: Hashable, Comparable {
        let block: Int
        let offset: UInt64
        static func < (a: Self, b: Self) -> Bool { (a.block, a.offset) < (b.block, b.offset) }
    }

    let layout: [MigrationConfiguration.Block]
    private(set) var pages: [StreamAnalysis.Pages]
    private(set) var suspect = Set<PageKey>()
    private(set) var resentMismatches = 0
    private var tail: [UInt8] = []
    private var decompressed: [UInt8] = []
    private var decompressor: ZstdDecompressor?

    init(layout: [MigrationConfiguration.Block]) {
        self.layout = layout
        pages = layout.map { StreamAnalysis.Pages(block: $0.name) }
    }

    /// Checks one intact `pages` frame's index, reads its tail, and checks
    /// every data page; returns why the tail is corrupt, if it is (a
    /// compressed tail that does not decompress: each of its pages is then suspect).
    mutating func load(_ header: FrameHeader, payload: [UInt8], from reader: inout FrameReader) throws(AnalysisStop) -> String? {
        let index: PageIndex
        do { index = try PageIndex(decoding: payload, tailLength: header.tailLength, layout: layout) } catch {
            throw AnalysisStop(error.description)
        }
        var corruption: String?
        if index.compressed {
            // Ferry's destination has 4 KiB pages; here the configuration says, so bound what it may claim.
            guard UInt64(index.dataByteCount) <= FrameHeader.maximumTail else {
                throw AnalysisStop("a compressed tail that claims \(index.dataByteCount) bytes of pages (at most \(FrameHeader.maximumTail))")
            }
            do { try reader.readTail(into: &tail) } catch { throw AnalysisStop(error.description) }
            do {
                let zstd = try decompressor ?? ZstdDecompressor()
                decompressor = zstd
                let input = tail
                try zstd.decompress(input.span, expectedSize: index.dataByteCount, into: &decompressed)
            } catch { corruption = "compressed pages: \(error)" }
        } else {
            do { try reader.readTail(into: &decompressed) } catch { throw AnalysisStop(error.description) }
        }
        var position = 0
        for record in index.records {
            let key = PageKey(block: record.block, offset: record.offset)
            switch record.kind {
            case .data:
                let size = Int(layout[record.block].pageSize)
                let intact = corruption == nil && FrameChecksum.of(decompressed[position..<position + size]) == record.checksum
                position += size
                pages[record.block].normal += 1
                if intact {
                    if suspect.remove(key) != nil { resentMismatches += 1 }
                } else {
                    suspect.insert(key)
                }
            case .zero, .invalid:
                pages[record.block].zero += 1
                if suspect.remove(key) != nil { resentMismatches += 1 }
            }
        }
        return corruption
    }

    /// Pages whose last copy did not match, in block and offset order, at most `limit` of them.
    func corruptPages(limit: Int) -> [StreamAnalysis.CorruptPage] {
        suspect.sorted().prefix(limit).map { StreamAnalysis.CorruptPage(block: layout[$0.block].name, offset: $0.offset) }
    }
}
