import MigrationProtocol

/// Why a migration failed, was refused, or a setting was not taken.
public enum MigrationError: Error, Equatable, Sendable, CustomStringConvertible {
    case channel(ChannelError)
    case stream(ProtocolError)
    case invalidParameter(String)
    case invalidState(String)
    case cancelled
    /// The destination could not be heard from (no answer, closed, timed out).
    case destination(String)
    /// The destination answered that it refused or failed to load the stream: it will not run the guest.
    case refused(String)
    /// The `end` frame may have reached the destination, which may run the guest,
    /// but its answer did not arrive: the source guest stays paused.
    case uncertainOutcome(String)
    /// Postcopy failed after the destination started the guest: its newest
    /// memory is there, so the source guest stays paused.
    case postcopyFailed(String)
    case state(String)

    public var description: String {
        switch self {
        case .channel(let error): error.description
        case .stream(let error): error.description
        case .invalidParameter(let why), .invalidState(let why): why
        case .cancelled: "migration cancelled"
        case .destination(let why), .refused(let why): "the destination failed: \(why)"
        case .uncertainOutcome(let why):
            "the destination's answer was lost after the switchover (\(why)); it may be running the guest, so the guest stays paused here: check the destination before 'cont'"
        case .postcopyFailed(let why):
            "the postcopy migration failed after the destination started the guest (\(why)); the guest's newest memory is there, not here, so it stays paused here"
        case .state(let why): why
        }
    }
}

extension MigrationError {
    /// Whether this is the destination's own answer that it did not load the stream.
    public var isDestinationAnswer: Bool { if case .refused = self { true } else { false } }

    /// Whether this already says that postcopy failed after the destination started the guest.
    var isPostcopyFailure: Bool { if case .postcopyFailed = self { true } else { false } }
}
