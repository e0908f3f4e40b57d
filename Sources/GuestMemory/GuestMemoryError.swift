/// Failures of the guest-memory layer, each naming what was asked for.
public enum GuestMemoryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The host could not map the memory (errno from mmap or memfd_create).
    case mapFailed(backend: MemoryBackend, byteCount: UInt64, errno: Int32)
    /// Hugetlb backing asked for but the host has too few free 2 MiB pages.
    case notEnoughHugePages(needed: Int, free: Int)
    /// A size that is zero or not a multiple of the backing page size.
    case invalidSize(UInt64, pageSize: PageSize)
    /// An access that does not lie wholly inside guest RAM.
    case outOfRange(GuestAddress, length: UInt64)
    /// The kernel would not free a range of guest RAM (errno from madvise).
    case discardFailed(offset: Int, count: Int, errno: Int32)

    public var description: String {
        switch self {
        case .mapFailed(let backend, let byteCount, let errno):
            "cannot map \(byteCount) bytes of \(backend) guest memory (errno \(errno))"
        case .notEnoughHugePages(let needed, let free):
            "hugetlb backing needs \(needed) free 2 MiB huge pages but the host has \(free)"
                + " (reserve them with: echo \(needed) > /proc/sys/vm/nr_hugepages)"
        case .invalidSize(let size, let pageSize):
            "guest memory size \(size) is not a positive multiple of the \(pageSize) page size"
        case .outOfRange(let address, let length):
            "guest access of \(length) bytes at \(address) falls outside guest RAM"
        case .discardFailed(let offset, let count, let errno):
            "cannot free \(count) bytes of guest RAM at offset \(offset) (errno \(errno))"
        }
    }
}
