import SystemPackage

/// Failures of the userfaultfd layer: the operation and what the kernel said.
public enum UserfaultfdError: Error, Equatable, Sendable, CustomStringConvertible {
    /// userfaultfd(2) itself failed (no kernel support, or not permitted).
    case open(Errno)
    /// An ioctl failed: its name and the errno.
    case ioctl(String, Errno)
    /// The kernel lacks features asked for (their names).
    case missingFeatures([String])
    /// A range the kernel registered without an ioctl the caller needs.
    case missingRangeIoctl(String)
    /// Reading events failed.
    case read(Errno)
    /// The descriptor reported an event other than a page fault (none is asked for).
    case unexpectedEvents(Int)

    public var description: String {
        switch self {
        case .open(let errno): "cannot open a userfaultfd: \(errno)"
        case .ioctl(let name, let errno): "\(name) failed: \(errno)"
        case .missingFeatures(let names): "the kernel's userfaultfd lacks \(names.joined(separator: ", "))"
        case .missingRangeIoctl(let name): "the registered range does not support \(name)"
        case .read(let errno): "cannot read userfaultfd events: \(errno)"
        case .unexpectedEvents(let count): "the userfaultfd reported \(count) event(s) other than page faults"
        }
    }
}
