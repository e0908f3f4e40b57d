/// What backs guest RAM on the host (`--memory-backend`).
public enum MemoryBackend: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Private anonymous memory, 4 KiB pages.
    case anon
    /// A memfd (shareable with another process, e.g. for postcopy or snapshots), 4 KiB pages.
    case memfd
    /// A hugetlbfs memfd with 2 MiB pages; needs pages reserved in /proc/sys/vm/nr_hugepages.
    case hugetlb

    public var description: String { rawValue }

    /// The host page size this backend maps guest RAM with.
    public var pageSize: PageSize { self == .hugetlb ? .huge2M : .base }
}
