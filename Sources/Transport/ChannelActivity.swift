import Synchronization

/// The bytes that the channels of one migration have received, counted
/// together.  A channel that shares one with the others fails a read for
/// inactivity only when none of them received anything while it waited: a
/// multifd migration's main channel is quiet for as long as a pass takes,
/// while its pages arrive on the multifd channels.
public final class ChannelActivity: Sendable {
    let received = Atomic<UInt64>(0)

    public init() {}

    /// Bytes received so far, on every channel that shares this.
    public var bytes: UInt64 { received.load(ordering: .relaxed) }

    func add(_ count: Int) {
        received.wrappingAdd(UInt64(count), ordering: .relaxed)
    }
}
