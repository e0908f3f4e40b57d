import Glibc
import Synchronization

/// A descriptor another process passed us (`SCM_RIGHTS`), owned here until a
/// command takes it; closed if nobody does.
///
/// QEMU's QMP commands `getfd` and `add-fd` take the descriptor that came with
/// the client's last message; this is that descriptor on its way from the
/// socket to the command.
public final class ReceivedDescriptor: Sendable, CustomStringConvertible {
    let number = Mutex<Int32?>(nil)

    /// Adopts `descriptor`: from now on this object closes it unless `take()` hands it on.
    public init(adopting descriptor: Int32) {
        number.withLock { $0 = descriptor }
    }

    deinit { close() }

    /// The descriptor, whose owner the caller becomes; nil once taken or closed.
    public func take() -> Int32? {
        number.withLock { current in
            defer { current = nil }
            return current
        }
    }

    /// Closes the descriptor unless it was taken.  Idempotent.
    public func close() {
        if let descriptor = take() { _ = Glibc.close(descriptor) }
    }

    public var description: String {
        number.withLock { $0 }.map { "received descriptor \($0)" } ?? "received descriptor (taken)"
    }
}
