import Foundation
import GuestMemory
import HostThreads
import MigrationProtocol
import Synchronization

/// A mapped-ram file opened for a restore: its header and per-block metadata,
/// checked against this machine's RAM before a page is read.
public struct MappedRAMImage: Sendable {
    public let header: MappedRAMHeader
    public let indexes: [MappedRAMBlockIndex]

    /// Reads and checks the header and metadata of `file` for `blocks`.
    public init(file: any PageFile, blocks: [MigrationConfiguration.Block]) throws(MigrationError) {
        do {
            let length = try file.length()
            guard length >= UInt64(MappedRAMFormat.fixedHeaderBytes) else {
                throw MigrationError.stream(.truncated("the file is \(length) bytes, shorter than a mapped-ram header"))
            }
            let prefix = try file.read(MappedRAMFormat.fixedHeaderBytes, at: 0)
            let total: Int
            do { total = try MappedRAMHeader.totalByteCount(prefix: prefix) } catch {
                if error == .badMagic { throw MigrationError.stream(.malformed("not a Ferry mapped-ram file (bad magic): was it saved with the mapped-ram capability?")) }
                throw MigrationError.stream(error)
            }
            let header: MappedRAMHeader
            do {
                header = try MappedRAMHeader(decoding: try file.read(total, at: 0), fileLength: length)
                guard header.isComplete else {
                    throw MigrationError.stream(.incomplete("the mapped-ram file's save did not complete (the header is not marked complete)"))
                }
                try header.check(against: blocks)
            } catch let error as ProtocolError { throw MigrationError.stream(error) }
            var indexes: [MappedRAMBlockIndex] = []
            for entry in header.entries {
                let bitmap = try file.read(Int(entry.bitmapBytes), at: entry.bitmapOffset)
                let sums = try file.read(Int(entry.checksumBytes), at: entry.checksumsOffset)
                do { indexes.append(try MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry)) } catch {
                    throw MigrationError.stream(error)
                }
            }
            (self.header, self.indexes) = (header, indexes)
        } catch let error as MigrationError {
            throw error
        } catch let error as ChannelError {
            if error == .endOfStream { throw .stream(.truncated("the mapped-ram file ends inside its metadata")) }
            throw .channel(error)
        } catch {
            throw .state("\(error)")
        }
    }

    public var presentPages: Int { indexes.reduce(0) { $0 + $1.presentCount } }
}

extension RAMMigration {
    /// Pages one reader takes at a time: read with one `preadv` per run of
    /// present pages (4 MiB: a restore into preallocated RAM took 380 ms against
    /// 422 with 1 MiB, medians of 3), then checked while still in cache.
    static let restoreSegmentPages = 1024

    /// Restores every page of `image` from `file` with `readers` threads in
    /// parallel, straight into guest RAM (on the O_DIRECT descriptor with
    /// `direct-io`).  Each page is checked against its checksum; a mismatch
    /// refuses the restore.  Pages the file lacks are zero: left alone when
    /// RAM starts zero, zeroed otherwise.
    ///
    /// While the readers run, guest RAM not yet touched is filled 4 KiB at a time
    /// (`adviseBasePages`); huge pages are advised again once they are done, so
    /// the kernel may still merge the restored memory later.  On this platform,
    /// readers faulting in transparent huge pages restored 1280 MiB in 3836, 6363
    /// and 6544 ms, with base pages in 1551, 1528 and 792 ms (alternating runs,
    /// bench/README "Eighth session").
    public func loadMappedRAM(_ image: MappedRAMImage, from file: any PageFile, readers: Int) throws(MigrationError) {
        for mapping in mappings { mapping.adviseBasePages() }
        defer { for mapping in mappings { mapping.adviseHugePages() } }
        let segments = image.indexes.enumerated().flatMap { block, index in
            stride(from: 0, to: index.pageCount, by: Self.restoreSegmentPages).map { (block: block, first: $0) }
        }
        let next = Atomic<Int>(0)
        let failure = Mutex<MigrationError?>(nil)
        let done = Mutex(0)
        let condition = NSCondition()
        let count = max(1, min(readers, segments.count))
        for _ in 0..<count {
            HostThread.start("ferry-restore") { [self] in
                var list = ScatterList()
                var normal = 0, zero = 0
                while failure.withLock({ $0 == nil }) {
                    let taken = next.add(1, ordering: .relaxed).oldValue
                    guard taken < segments.count else { break }
                    let segment = segments[taken]
                    do throws(MigrationError) {
                        let loaded = try restoreSegment(segment.block, first: segment.first, image: image, file: file, list: &list)
                        normal += loaded.normal
                        zero += loaded.zero
                    } catch {
                        failure.withLock { if $0 == nil { $0 = error } }
                    }
                }
                statistics.withLock { s in
                    s.normalPages += UInt64(normal)
                    s.zeroPages += UInt64(zero)
                }
                condition.lock()
                done.withLock { $0 += 1 }
                condition.broadcast()
                condition.unlock()
            }
        }
        condition.lock()
        while done.withLock({ $0 }) < count { condition.wait() }
        condition.unlock()
        if let error = failure.withLock({ $0 }) { throw error }
        load.withLock { $0.pagesLoaded = true }
    }

    /// One segment: present pages read and checked, absent ones zero.
    private func restoreSegment(_ block: Int, first: Int, image: MappedRAMImage, file: any PageFile,
                                list: inout ScatterList) throws(MigrationError) -> (normal: Int, zero: Int) {
        let index = image.indexes[block]
        let entry = image.header.entries[block]
        let end = min(first + Self.restoreSegmentPages, index.pageCount)
        let pageSize = Self.pageSize
        let mapping = mappings[block]
        var normal = 0
        var page = first
        while page < end {
            guard index[page] else {
                if !destinationStartsZero { mapping.zeroPage(at: page * pageSize) }
                page += 1
                continue
            }
            var runEnd = page + 1
            while runEnd < end, index[runEnd] { runEnd += 1 }
            list.removeAll()
            list.append(mapping, offset: page * pageSize, count: (runEnd - page) * pageSize)
            do { try file.read(into: list, at: entry.pagesOffset + UInt64(page * pageSize)) } catch {
                if error == .endOfStream {
                    throw .stream(.truncated("block '\(entry.name)' page \(page): the file ends inside its page area"))
                }
                throw .channel(error)
            }
            for check in page..<runEnd {
                let sum = mapping.withSpan(at: check * pageSize, count: pageSize) { FrameChecksum.of($0) }
                guard sum == index.checksums[check] else {
                    throw .stream(.malformed("block '\(entry.name)' page \(check) (offset \(check * pageSize)) does not match its checksum: the file is corrupt"))
                }
            }
            normal += runEnd - page
            page = runEnd
        }
        return (normal, (end - first) - normal)
    }
}
