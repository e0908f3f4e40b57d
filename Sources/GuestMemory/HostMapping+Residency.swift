import CLinuxUAPI
import Glibc
import SystemPackage

/// Which chunks of a mapping hold memory, asked of the kernel without touching
/// a page.  "Resident" here means present in RAM *or swapped out*: `mincore`
/// alone calls a page that left for swap (or zswap) not resident, and a chunk
/// it calls empty is sent as zero pages without being read.
extension HostMapping {
    /// The `chunkBytes`-sized chunks holding at least one page the guest or the
    /// VMM has written, whether it sits in RAM or in swap.  A chunk that is not
    /// resident reads as zero.  Each backend is asked in its own terms:
    ///
    /// - anon: the page tables, through `PAGEMAP_SCAN` on /proc/self/pagemap
    ///   (Linux 6.7; one ioctl returns ranges) for pages present or swapped, or
    ///   else the pagemap entries themselves (bit 63 present, bit 62 swapped).
    /// - memfd: the file's data extents (`SEEK_DATA`/`SEEK_HOLE`).  A swapped
    ///   shmem page leaves an empty page-table entry that neither pagemap nor
    ///   mincore reports, but the file still holds it.
    /// - hugetlb: `mincore`; huge pages are never swapped.
    ///
    /// Every chunk is reported resident if the kernel cannot be asked.
    ///
    /// With `among`, only those chunks are asked about (and only they can be set).
    public func residentChunks(chunkBytes: Int, among: Range<Int>? = nil) -> DirtyBitmap {
        precondition(chunkBytes > 0 && chunkBytes % PageSize.base.byteCount == 0)
        let chunkCount = (byteCount + chunkBytes - 1) / chunkBytes
        let chunks = among.map { $0.clamped(to: 0..<chunkCount) } ?? 0..<chunkCount
        let bytes = chunks.lowerBound * chunkBytes..<min(chunks.upperBound * chunkBytes, byteCount)
        let found: DirtyBitmap? = switch backend {
        case .anon: scannedChunks(chunkBytes: chunkBytes, bytes: bytes) ?? pagemapChunks(chunkBytes: chunkBytes, chunks: chunks)
        case .memfd: dataExtentChunks(chunkBytes: chunkBytes, bytes: bytes)
        case .hugetlb: mincoreChunks(chunkBytes: chunkBytes, chunks: chunks)
        }
        if let found { return found }
        var all = DirtyBitmap(pageCount: chunkCount)
        for chunk in chunks { all[chunk] = true }
        return all
    }

    /// Marks every chunk that `[start, end)` (byte offsets into the mapping) touches.
    private static func mark(_ chunks: inout DirtyBitmap, from start: Int, to end: Int, chunkBytes: Int) {
        guard start < end else { return }
        for chunk in start / chunkBytes...(end - 1) / chunkBytes { chunks[chunk] = true }
    }

    private static func openPagemap() -> FileDescriptor? {
        try? FileDescriptor.open(FilePath("/proc/self/pagemap"), .readOnly, options: .closeOnExec)
    }

    /// Anon residency by `PAGEMAP_SCAN`: the ranges of pages present or
    /// swapped.  `nil` if the ioctl fails (before Linux 6.7: ENOTTY or EINVAL).
    func scannedChunks(chunkBytes: Int, bytes: Range<Int>) -> DirtyBitmap? {
        guard let pagemap = Self.openPagemap() else { return nil }
        defer { try? pagemap.close() }
        var chunks = DirtyBitmap(pageCount: (byteCount + chunkBytes - 1) / chunkBytes)
        let first = hostAddress(at: 0), end = hostAddress(at: bytes.upperBound)
        var regions = [CLinuxUAPI_page_region](repeating: CLinuxUAPI_page_region(), count: 512)
        var start = hostAddress(at: bytes.lowerBound)
        while start < end {
            var walkEnd: UInt64 = 0
            let filled = unsafe regions.withUnsafeMutableBufferPointer { buffer in
                // SAFETY: the kernel writes at most `buffer.count` regions into the buffer.
                unsafe CLinuxUAPI_pagemap_scan(pagemap.rawValue, start, end, CLinuxUAPI_PAGE_IS_PRESENT | CLinuxUAPI_PAGE_IS_SWAPPED,
                                               buffer.baseAddress, UInt64(buffer.count), &walkEnd)
            }
            guard filled >= 0, walkEnd > start, walkEnd <= end else { return nil }
            for region in regions[..<Int(filled)] {
                guard region.start >= first, region.end <= end else { return nil }
                Self.mark(&chunks, from: Int(region.start - first), to: Int(region.end - first), chunkBytes: chunkBytes)
            }
            start = walkEnd
        }
        return chunks
    }

    /// Anon residency from the pagemap entries, one 8-byte entry per 4 KiB
    /// page, read a chunk at a time: the fallback before `PAGEMAP_SCAN`.
    func pagemapChunks(chunkBytes: Int, chunks range: Range<Int>) -> DirtyBitmap? {
        guard let pagemap = Self.openPagemap() else { return nil }
        defer { try? pagemap.close() }
        let present: UInt64 = 1 << 63, swapped: UInt64 = 1 << 62
        let pageBytes = PageSize.base.byteCount
        let chunkCount = (byteCount + chunkBytes - 1) / chunkBytes
        var chunks = DirtyBitmap(pageCount: chunkCount)
        var entries = [UInt64](repeating: 0, count: chunkBytes / pageBytes)
        let firstPage = Int(hostAddress(at: 0)) / pageBytes
        for chunk in range {
            let pages = min(chunkBytes, byteCount - chunk * chunkBytes) / pageBytes
            let entryOffset = Int64(firstPage + chunk * chunkBytes / pageBytes) * 8
            let read = try? unsafe entries.withUnsafeMutableBytes { bytes in
                // SAFETY: the read fills at most the first `pages` entries of the array.
                try unsafe pagemap.read(fromAbsoluteOffset: entryOffset, into: UnsafeMutableRawBufferPointer(rebasing: bytes[..<(pages * 8)]))
            }
            guard read == pages * 8 else { return nil }
            if entries[..<pages].contains(where: { $0 & (present | swapped) != 0 }) { chunks[chunk] = true }
        }
        return chunks
    }

    /// memfd residency from the file's data extents: shmem counts a page in
    /// swap as data, as it counts one in RAM.  `nil` if lseek fails.
    func dataExtentChunks(chunkBytes: Int, bytes: Range<Int>) -> DirtyBitmap? {
        guard let memfd else { return nil }
        var chunks = DirtyBitmap(pageCount: (byteCount + chunkBytes - 1) / chunkBytes)
        var offset = bytes.lowerBound
        while offset < bytes.upperBound {
            let data = CLinuxUAPI_lseek(memfd.rawValue, offset, CLinuxUAPI_SEEK_DATA)
            if data == -Int(ENXIO) || data >= bytes.upperBound { break }      // no data from here on
            guard data >= 0 else { return nil }
            let hole = CLinuxUAPI_lseek(memfd.rawValue, data, CLinuxUAPI_SEEK_HOLE)
            guard hole > data else { return nil }
            let end = min(hole, bytes.upperBound)
            Self.mark(&chunks, from: data, to: end, chunkBytes: chunkBytes)
            // The chunk holding the extent's end is marked: go on from the next one.
            offset = max(end, ((end - 1) / chunkBytes + 1) * chunkBytes)
        }
        return chunks
    }

    /// Residency by `mincore`: pages in RAM only, so right only for memory that
    /// is never swapped (hugetlb).  A chunk whose query fails counts as resident.
    func mincoreChunks(chunkBytes: Int, chunks: Range<Int>) -> DirtyBitmap {
        let chunkCount = (byteCount + chunkBytes - 1) / chunkBytes
        var result = DirtyBitmap(pageCount: chunkCount)
        let pagesPerChunk = chunkBytes / PageSize.base.byteCount
        var vector = [UInt8](repeating: 0, count: pagesPerChunk)
        for chunk in chunks {
            let offset = chunk * chunkBytes
            let length = min(chunkBytes, byteCount - offset)
            let status = unsafe vector.withUnsafeMutableBufferPointer { buffer in
                // SAFETY: the range lies inside the mapping; the vector has a byte per page of it.
                unsafe mincore(base + offset, length, buffer.baseAddress)
            }
            let pages = length / PageSize.base.byteCount
            if status != 0 || vector[..<pages].contains(where: { $0 & 1 != 0 }) { result[chunk] = true }
        }
        return result
    }

    /// The 4 KiB pages of the mapping that sit in RAM (`mincore`; pages in the
    /// swap cache count, pages out in swap or zswap do not); `nil` if mincore fails.
    func pagesInRAM() -> DirtyBitmap? {
        let pages = byteCount / PageSize.base.byteCount
        var vector = [UInt8](repeating: 0, count: pages)
        let status = unsafe vector.withUnsafeMutableBufferPointer { buffer in
            // SAFETY: the whole mapping; the vector has a byte per 4 KiB page of it.
            unsafe mincore(base, byteCount, buffer.baseAddress)
        }
        guard status == 0 else { return nil }
        var result = DirtyBitmap(pageCount: pages)
        for page in 0..<pages where vector[page] & 1 != 0 { result[page] = true }
        return result
    }

    /// Asks the kernel to write the mapping's pages out to swap now
    /// (`MADV_PAGEOUT`, Linux 5.4), as memory pressure would.  For tests of
    /// swapped-out guest memory; returns whether the kernel took the advice.
    func pageOut() -> Bool {
        // SAFETY: the whole mapping, which this object owns; paging out keeps its contents.
        unsafe madvise(base, byteCount, 21 /* MADV_PAGEOUT */) == 0
    }
}
