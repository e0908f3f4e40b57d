import CLinuxUAPI

/// The `UFFD_FEATURE_*` bits Ferry asks for, by the kernel's names.
public struct UserfaultfdFeatures: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Write-protect faults say so in their flags (needed for `REGISTER_MODE_WP`).
    public static let pageFaultFlagWP = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_PAGEFAULT_FLAG_WP)
    public static let missingHugetlbfs = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_MISSING_HUGETLBFS)
    public static let missingShmem = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_MISSING_SHMEM)
    public static let minorHugetlbfs = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_MINOR_HUGETLBFS)
    public static let minorShmem = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_MINOR_SHMEM)
    public static let exactAddress = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_EXACT_ADDRESS)
    /// Write-protect on shmem (memfd) and hugetlbfs mappings (Linux 5.19).
    public static let wpHugetlbfsShmem = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    /// Write-protect reaches pages never populated in anonymous memory (Linux 6.4),
    /// so protecting a range needs no pass that maps every page first.
    public static let wpUnpopulated = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_WP_UNPOPULATED)
    /// Write faults resolved by the kernel, recorded for `PAGEMAP_SCAN` (Linux 6.7).
    public static let wpAsync = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_WP_ASYNC)
    /// A fault names its thread (`ptid`): postcopy blocktime tells vCPUs apart.
    public static let threadID = Self(rawValue: CLinuxUAPI_UFFD_FEATURE_THREAD_ID)

    static let named: [(Self, String)] = [
        (.pageFaultFlagWP, "PAGEFAULT_FLAG_WP"), (.missingHugetlbfs, "MISSING_HUGETLBFS"), (.missingShmem, "MISSING_SHMEM"),
        (.minorHugetlbfs, "MINOR_HUGETLBFS"), (.minorShmem, "MINOR_SHMEM"), (.exactAddress, "EXACT_ADDRESS"),
        (.wpHugetlbfsShmem, "WP_HUGETLBFS_SHMEM"), (.wpUnpopulated, "WP_UNPOPULATED"), (.wpAsync, "WP_ASYNC"),
        (.threadID, "THREAD_ID"),
    ]

    /// The kernel's names of the bits set, `UFFD_FEATURE_` left off.
    public var names: [String] {
        Self.named.filter { contains($0.0) }.map(\.1) + (subtracting(Self.named.reduce([]) { $0.union($1.0) }).isEmpty ? [] : ["0x\(String(rawValue, radix: 16))"])
    }

    public var description: String { names.joined(separator: "|") }
}

/// `UFFDIO_REGISTER_MODE_*`: which faults a registered range reports.
public struct UserfaultfdModes: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Reads or writes of pages not present.
    public static let missing = Self(rawValue: CLinuxUAPI_UFFDIO_REGISTER_MODE_MISSING)
    /// Writes to write-protected pages.
    public static let writeProtect = Self(rawValue: CLinuxUAPI_UFFDIO_REGISTER_MODE_WP)
    /// Accesses to pages in the page cache but not mapped (shmem, hugetlbfs).
    public static let minor = Self(rawValue: CLinuxUAPI_UFFDIO_REGISTER_MODE_MINOR)
}

/// One page fault the descriptor reported.
public struct UserfaultEvent: Equatable, Sendable {
    /// The faulting address (rounded down to the page unless `EXACT_ADDRESS` was asked).
    public let address: UInt64
    public let isWrite: Bool
    /// A write to a write-protected page (`UFFD_PAGEFAULT_FLAG_WP`).
    public let isWriteProtect: Bool
    /// A minor fault (`UFFD_PAGEFAULT_FLAG_MINOR`).
    public let isMinor: Bool
    /// The faulting thread's TID with `THREAD_ID`; 0 without it.
    public let thread: UInt32

    public init(address: UInt64, flags: UInt64, thread: UInt32 = 0) {
        self.address = address
        self.thread = thread
        isWrite = flags & CLinuxUAPI_UFFD_PAGEFAULT_FLAG_WRITE != 0
        isWriteProtect = flags & CLinuxUAPI_UFFD_PAGEFAULT_FLAG_WP != 0
        isMinor = flags & CLinuxUAPI_UFFD_PAGEFAULT_FLAG_MINOR != 0
    }
}
