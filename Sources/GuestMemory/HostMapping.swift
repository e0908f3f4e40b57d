import CLinuxUAPI
import Glibc
import SystemPackage

/// One host mapping of guest RAM, unmapped (and its memfd closed) on deinit.
///
/// The mapping is reserved with `MAP_NORESERVE` and never touched here, so a
/// 16 GiB guest costs nothing until the guest writes its pages.
@safe public final class HostMapping: @unchecked Sendable {
    // @unchecked: `base` and `byteCount` never change after init; guest bytes are
    // only copied in and out through bounds-checked methods.
    public let byteCount: Int
    public let backend: MemoryBackend
    let base: UnsafeMutableRawPointer
    /// The memfd behind a shared mapping; `nil` for anonymous memory.
    public let memfd: FileDescriptor?

    public init(byteCount: UInt64, backend: MemoryBackend) throws(GuestMemoryError) {
        let pageSize = backend.pageSize
        guard byteCount > 0, byteCount % UInt64(pageSize.byteCount) == 0, byteCount <= UInt64(Int.max) else {
            throw .invalidSize(byteCount, pageSize: pageSize)
        }
        if backend == .hugetlb {
            let needed = Int(byteCount / UInt64(pageSize.byteCount))
            let free = HostMemory.freeHugePages2M
            guard free >= needed else { throw .notEnoughHugePages(needed: needed, free: free) }
        }
        let length = Int(byteCount)
        var fd: Int32 = -1
        if backend != .anon {
            let flags = CLinuxUAPI_MFD_CLOEXEC | (backend == .hugetlb ? CLinuxUAPI_MFD_HUGETLB | UInt32(CLinuxUAPI_MAP_HUGE_2MB) : 0)
            let result = unsafe CLinuxUAPI_memfd_create("ferry-guest-ram", flags)
            guard result >= 0 else { throw .mapFailed(backend: backend, byteCount: byteCount, errno: Int32(-result)) }
            fd = Int32(result)
            if ftruncate(fd, off_t(length)) != 0 {
                let error = errno
                close(fd)
                throw .mapFailed(backend: backend, byteCount: byteCount, errno: error)
            }
        }
        let flags = backend == .anon
            ? MAP_PRIVATE | MAP_ANONYMOUS | CLinuxUAPI_MAP_NORESERVE
            : MAP_SHARED | CLinuxUAPI_MAP_NORESERVE
        let address = CLinuxUAPI_mmap(nil, length, PROT_READ | PROT_WRITE, flags, fd, 0)
        guard address > 0, let pointer = unsafe UnsafeMutableRawPointer(bitPattern: address) else {
            if fd >= 0 { close(fd) }
            throw .mapFailed(backend: backend, byteCount: byteCount, errno: Int32(-address))
        }
        unsafe self.base = pointer
        self.byteCount = length
        self.backend = backend
        self.memfd = fd >= 0 ? FileDescriptor(rawValue: fd) : nil
    }

    deinit {
        _ = unsafe munmap(base, byteCount)
        try? memfd?.close()
    }

    /// The host virtual address of byte `offset`, for handing to the kernel
    /// (KVM memory slots).  The caller must keep this mapping alive while the
    /// kernel uses it; `VirtualMachine.map` does so by retaining the `RAMBlock`.
    public func hostAddress(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && offset <= byteCount)
        return UInt64(UInt(bitPattern: unsafe base + offset))
    }

    /// Copies `count` bytes at `offset` out of the mapping.
    func copyBytes(at offset: Int, into destination: UnsafeMutableRawBufferPointer) {
        precondition(offset >= 0 && destination.count <= byteCount - offset)
        // SAFETY: the precondition proved [offset, offset + count) lies inside the mapping.
        unsafe destination.copyMemory(from: UnsafeRawBufferPointer(start: base + offset, count: destination.count))
    }

    /// Copies bytes into the mapping at `offset`.
    func storeBytes(_ source: UnsafeRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && source.count <= byteCount - offset)
        // SAFETY: the precondition proved the destination lies inside the mapping.
        unsafe UnsafeMutableRawBufferPointer(start: base + offset, count: source.count).copyMemory(from: source)
    }

    /// Calls `body` with a read-only view of `[offset, offset + count)`.  The
    /// guest may be writing these bytes concurrently; `body` must not keep the pointer.
    func withBytes<R>(at offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(offset >= 0 && count >= 0 && count <= byteCount - offset)
        // SAFETY: bounds checked above; the view does not escape `body`.
        return try unsafe body(UnsafeRawBufferPointer(start: base + offset, count: count))
    }
}

/// Facts about the host's memory, read from /proc and /sys.
public enum HostMemory {
    /// Free 2 MiB huge pages (`free_hugepages`), 0 if unknown.
    public static var freeHugePages2M: Int {
        Int(readFirstLine("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") ?? "") ?? 0
    }

    /// Total host RAM in bytes (`MemTotal` in /proc/meminfo).
    public static var totalBytes: UInt64 {
        guard let text = readFile("/proc/meminfo") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ")
            if fields.count >= 2, let kib = UInt64(fields[1]) { return kib * 1024 }
        }
        return 0
    }

    static func readFirstLine(_ path: String) -> String? {
        readFile(path)?.split(separator: "\n").first.map(String.init)
    }

    static func readFile(_ path: String) -> String? {
        guard let fd = try? FileDescriptor.open(FilePath(path), .readOnly) else { return nil }
        defer { try? fd.close() }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = (try? unsafe chunk.withUnsafeMutableBytes { try unsafe fd.read(into: $0) }) ?? 0
            if count <= 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension HostMapping {
    /// Whether the 4 KiB page at `offset` reads as all zeroes.  The guest may be writing it.
    public func isZeroPage(at offset: Int) -> Bool {
        unsafe withBytes(at: offset, count: PageSize.base.byteCount) { raw in
            // SAFETY: mappings are page-aligned and `offset` is 4 KiB-aligned, so the words are aligned.
            let words = unsafe raw.assumingMemoryBound(to: UInt64.self)
            // 64 bytes at a time, stopping at the first that is not zero: a page
            // with data is usually told apart within its first block.
            var i = 0
            while i < PageSize.base.byteCount / 8 {
                var any: UInt64 = 0
                for k in 0..<8 { any |= unsafe words[i + k] }
                if any != 0 { return false }
                i += 8
            }
            return true
        }
    }

    /// Appends the 4 KiB page at `offset` to `buffer` (one copy, no allocation when it has capacity).
    public func appendPage(at offset: Int, to buffer: inout [UInt8]) {
        let count = PageSize.base.byteCount
        unsafe withBytes(at: offset, count: count) { source in
            unsafe buffer.append(contentsOf: source)
        }
    }

    /// Writes one 4 KiB page at `offset` from `bytes[range]` (exactly a page long).
    public func storePage(_ bytes: [UInt8], range: Range<Int>, at offset: Int) {
        precondition(range.count == PageSize.base.byteCount && range.lowerBound >= 0 && range.upperBound <= bytes.count)
        unsafe bytes.withUnsafeBytes { raw in
            // SAFETY: the precondition keeps `range` inside the array.
            unsafe storeBytes(UnsafeRawBufferPointer(rebasing: raw[range]), at: offset)
        }
    }

    /// Makes the 4 KiB page at `offset` zero, writing only if it is not zero already
    /// (so untouched memory stays unallocated).
    public func zeroPage(at offset: Int) {
        guard !isZeroPage(at: offset) else { return }
        precondition(offset >= 0 && offset <= byteCount - PageSize.base.byteCount)
        // SAFETY: bounds checked above.
        unsafe (base + offset).initializeMemory(as: UInt8.self, repeating: 0, count: PageSize.base.byteCount)
    }

    /// Allocates every page now (`MADV_POPULATE_WRITE`, QEMU's `-mem-prealloc`),
    /// so no page fault or page clearing is left for later.  Throws the errno.
    public func prefault() throws(GuestMemoryError) {
        let result = unsafe madvise(base, byteCount, Self.madvisePopulateWrite)
        guard result == 0 else { throw .mapFailed(backend: backend, byteCount: UInt64(byteCount), errno: errno) }
    }

    /// Linux 5.14's `MADV_POPULATE_WRITE` (newer than Glibc's headers here).
    static let madvisePopulateWrite: Int32 = 23

    /// Allocates the pages of `[offset, offset + count)` in one call
    /// (`MADV_POPULATE_WRITE`).  Best effort: if the kernel refuses, the pages
    /// fault in when they are written.
    public func populate(offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && count <= byteCount - offset)
        // SAFETY: bounds checked above; madvise only allocates inside the range.
        _ = unsafe madvise(base + offset, count, Self.madvisePopulateWrite)
    }

    /// Frees `[offset, offset + count)`: the next access finds the pages missing
    /// (and, on a range registered with userfaultfd, reports a missing-page
    /// fault).  Anonymous memory with `MADV_DONTNEED`; memfd and hugetlbfs with
    /// `MADV_REMOVE`, which frees the file's pages too (a shared mapping's
    /// `MADV_DONTNEED` would only unmap them).  Hugetlb ranges are whole huge pages.
    public func discard(offset: Int, count: Int) throws(GuestMemoryError) {
        let unit = backend.pageSize.byteCount
        precondition(offset >= 0 && count >= 0 && count <= byteCount - offset && offset % unit == 0 && count % unit == 0)
        guard count > 0 else { return }
        let advice: Int32 = backend == .anon ? 4 /* MADV_DONTNEED */ : 9 /* MADV_REMOVE */
        // SAFETY: bounds checked above; madvise only frees pages inside the range.
        guard unsafe madvise(base + offset, count, advice) == 0 else { throw .discardFailed(offset: offset, count: count, errno: errno) }
    }

    /// Asks the kernel to back this mapping with transparent huge pages
    /// (`MADV_HUGEPAGE`), so filling it costs one fault per 2 MiB.  Best effort.
    public func adviseHugePages() {
        guard backend == .anon else { return }
        _ = unsafe madvise(base, byteCount, 14 /* MADV_HUGEPAGE */)
    }

    /// The opposite advice (`MADV_NOHUGEPAGE`): pages touched from now on come
    /// 4 KiB at a time, until `adviseHugePages` again.  Best effort.
    public func adviseBasePages() {
        guard backend == .anon else { return }
        _ = unsafe madvise(base, byteCount, 15 /* MADV_NOHUGEPAGE */)
    }
}

extension HostMapping {
    /// The little-endian 64-bit word at `offset` (a multiple of 8).
    public func loadWord(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && offset % 8 == 0 && offset <= byteCount - 8)
        // SAFETY: bounds and alignment checked above (mappings are page-aligned).
        return UInt64(littleEndian: unsafe (base + offset).load(as: UInt64.self))
    }

    /// Stores `value` little-endian at `offset` (a multiple of 8).  Callers keep
    /// any one word to one thread at a time.
    public func storeWord(_ value: UInt64, at offset: Int) {
        precondition(offset >= 0 && offset % 8 == 0 && offset <= byteCount - 8)
        // SAFETY: bounds and alignment checked above (mappings are page-aligned).
        unsafe (base + offset).storeBytes(of: value.littleEndian, as: UInt64.self)
    }
}
