/// Why a descriptor command (`getfd`, `closefd`, `add-fd`, `remove-fd`) was
/// refused, in QEMU's words (`monitor/fds.c`).
public enum DescriptorError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `getfd` or `add-fd` came without a descriptor on the socket.
    case noneSupplied
    /// `getfd` with a name that starts with a digit (`fd:3` would read it as a number).
    case nameStartsWithDigit
    /// `add-fd` with a negative `fdset-id`.
    case negativeFdsetID
    /// `closefd` of an unknown name, `remove-fd` of an unknown set or
    /// descriptor: QEMU names the latter `fdset-id:N[, fd:M]`.
    case notFound(String)

    public var description: String {
        switch self {
        case .noneSupplied: "No file descriptor supplied via SCM_RIGHTS"
        case .nameStartsWithDigit: "Parameter 'fdname' expects a name not starting with a digit"
        case .negativeFdsetID: "Parameter 'fdset-id' expects a non-negative value"
        case .notFound(let name): "File descriptor named '\(name)' not found"
        }
    }
}
