import Compression
import GuestMemory
import MigrationProtocol
import Synchronization

/// QEMU's `zero-page-detection`: where zero pages are found.
public enum ZeroPageDetection: String, Sendable, CaseIterable {
    /// Never: every page goes out as data.
    case none
    /// On the migration thread, as the page is picked.
    case legacy
    /// On the channel that sends the page, in the pass that checksums it (QEMU's default).
    case multifd
}

/// Pages picked to go out together in one `pages` frame: block index and
/// byte offset of each, and whether the picker already knows it is zero.
struct PageJob: Sendable {
    var blocks: [Int] = []
    var offsets: [Int] = []
    var knownZero: [Bool] = []
    /// Told by a file worker once the job's pages are written (a background
    /// snapshot then lifts their write protection).
    var onWritten: (@Sendable () -> Void)?

    var count: Int { blocks.count }

    mutating func append(block: Int, offset: Int, zero: Bool) {
        blocks.append(block)
        offsets.append(offset)
        knownZero.append(zero)
    }
}

/// What one channel has sent, for `query-migrate`.
public struct ChannelStatistics: Equatable, Sendable {
    public var role: ChannelRole
    public var index: Int
    public var bytes: UInt64 = 0
    public var frames: UInt64 = 0
    public var normalPages: UInt64 = 0
    public var zeroPages: UInt64 = 0

    public init(role: ChannelRole, index: Int) { (self.role, self.index) = (role, index) }
}

/// Turns page jobs into `pages` frames on one channel: checksums each page
/// (and finds zero pages) in one pass, then writes the frame head and the
/// pages themselves, by reference into guest RAM, in one gather write.  Owned
/// by the one thread that sends on the channel.
struct PageSender: ~Copyable {
    let writer: StreamWriter
    let mappings: [HostMapping]
    let detection: ZeroPageDetection
    let statistics: RAMCounters
    /// zstd for the pages (`multifd-compression: zstd`), made on the sending thread.
    let compressor: ZstdCompressor?
    /// Set with `zero-copy-send`: the pages go with `MSG_ZEROCOPY`, the frame head with a plain write.
    let zeroCopy: (any ZeroCopyChannel)?
    var index = PageIndexBuilder()
    var list = GatherList(arenaCapacity: 8 << 10)
    var pageList = GatherList()
    var dataRuns: [PageRun] = []
    var pages = (normal: UInt64(0), zero: UInt64(0))

    init(writer: StreamWriter, mappings: [HostMapping], detection: ZeroPageDetection, statistics: RAMCounters,
         compressor: ZstdCompressor? = nil, zeroCopy: (any ZeroCopyChannel)? = nil) {
        (self.writer, self.mappings, self.detection) = (writer, mappings, detection)
        self.statistics = statistics
        self.compressor = compressor
        self.zeroCopy = zeroCopy
    }

    static let pageSize = RAMMigration.pageSize

    /// With zero-copy: waits until the kernel is done with every page sent so
    /// far (at each sync and at the end, as QEMU does); counts a flush whose
    /// sends the kernel copied after all (QEMU's `dirty-sync-missed-zero-copy`).
    func flushZeroCopy() throws(MigrationError) {
        guard let zeroCopy else { return }
        let copied: Bool
        do { copied = try zeroCopy.flushZeroCopy() } catch { throw .channel(error) }
        if copied { statistics.withLock { $0.dirtySyncMissedZeroCopy += 1 } }
    }

    /// Sends `job` as one frame.
    mutating func send(_ job: PageJob) throws(MigrationError) {
        guard job.count > 0 else { return }
        index.reset()
        list.removeAll()
        var data = 0
        let findZero = detection != .none
        // The records first, so the frame head (which numbers the frame) can lead the list.
        // The data pages are kept as runs adjacent in one block, and the block's mapping is
        // taken once a run: not retained and released once a page, where the channels'
        // threads would contend for its reference count.
        dataRuns.removeAll(keepingCapacity: true)
        var mapping: HostMapping?
        var mappingBlock = -1
        for i in 0..<job.count {
            let (block, offset) = (job.blocks[i], job.offsets[i])
            if !job.knownZero[i] {
                if block != mappingBlock { (mapping, mappingBlock) = (mappings[block], block) }
                let scan = mapping!.withSpan(at: offset, count: Self.pageSize) { PageScan.of($0) }
                if !(findZero && scan.isZero) {
                    index.append(block: block, offset: UInt64(offset), kind: .data, checksum: scan.checksum)
                    dataRuns.appendPage(block: block, offset: offset, pageSize: Self.pageSize)
                    data += 1
                    continue
                }
            }
            index.append(block: block, offset: UInt64(offset), kind: .zero)
        }
        if let compressor, data > 0 {
            // The tail: one zstd frame of the data pages, read from guest RAM by the compressor.
            let size: Int
            do {
                try compressor.begin(totalBytes: data * Self.pageSize)
                for run in dataRuns {
                    var failure: CompressionError?
                    mappings[run.block].withSpan(at: run.offset, count: run.pages * Self.pageSize) { span in
                        do throws(CompressionError) {
                            for page in 0..<run.pages { try compressor.append(span.extracting(page * Self.pageSize..<(page + 1) * Self.pageSize)) }
                        } catch { failure = error }
                    }
                    if let failure { throw failure }
                }
                size = try compressor.finish()
            } catch { throw .state("zstd compression failed: \(error)") }
            list.append(writer.pagesFrameHead(index: index.payload(compressed: true), tailLength: size))
            compressor.withOutput { list.append($0) }
        } else if let zeroCopy {
            list.append(writer.pagesFrameHead(index: index.payload(), tailLength: data * Self.pageSize))
            pageList.removeAll()
            for run in dataRuns { pageList.append(mappings[run.block], offset: run.offset, count: run.pages * Self.pageSize) }
            try writer.write(list)
            try writer.writeZeroCopy(pageList, on: zeroCopy)
            list.removeAll()
        } else {
            list.append(writer.pagesFrameHead(index: index.payload(), tailLength: data * Self.pageSize))
            // The tail: the data pages in record order, by reference into guest RAM.
            for run in dataRuns { list.append(mappings[run.block], offset: run.offset, count: run.pages * Self.pageSize) }
        }
        try writer.write(list)
        let zero = job.count - data
        pages.normal += UInt64(data)
        pages.zero += UInt64(zero)
        statistics.withLock { s in
            s.normalPages += UInt64(data)
            s.zeroPages += UInt64(zero)
        }
    }
}

/// Data pages adjacent in one RAM block, in the order they are sent.
struct PageRun: Equatable {
    let block: Int
    let offset: Int
    var pages: Int
}

extension Array where Element == PageRun {
    /// The page at `offset` of `block` next: it extends the last run when adjacent to it.
    mutating func appendPage(block: Int, offset: Int, pageSize: Int) {
        if let last, last.block == block, last.offset + last.pages * pageSize == offset {
            self[count - 1].pages += 1
        } else {
            append(PageRun(block: block, offset: offset, pages: 1))
        }
    }
}

/// RAM counters shared by the threads that send or load pages.
final class RAMCounters: Sendable {
    let state = Mutex(RAMStatistics())
    func withLock<R>(_ body: (inout RAMStatistics) -> R) -> R { state.withLock { body(&$0) } }
}
