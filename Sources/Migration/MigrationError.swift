import MigrationProtocol

/// Why a migration failed, was refused, or a setting was not taken.
public enum MigrationError: Error, Equatable, Sendable, CustomStringConvertible {
    case channel(ChannelError)
    case stream(ProtocolError)
    case invalidParameter(String)
    case invalidState(String)
    case cancelled
    case destination(String)
    case state(String)

    public var description: String {
        switch self {
        case .channel(let error): error.description
        case .stream(let error): error.description
        case .invalidParameter(let why), .invalidState(let why): why
        case .cancelled: "migration cancelled"
        case .destination(let why): "the destination failed: \(why)"
        case .state(let why): why
        }
    }
}
