import Foundation
import HostThreads
import Synchronization

/// A named thread that runs `body` once; `join` waits until it has returned.
/// How it is told to return is the owner's business (a flag and an interrupt).
final class JoinableThread: Sendable {
    let exited = Mutex(false)
    let condition = NSCondition()

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        HostThread.start(name) { [self] in
            body()
            condition.lock()
            exited.withLock { $0 = true }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Waits until the body has returned (at once if it has).
    func join() {
        condition.lock()
        while !exited.withLock({ $0 }) { condition.wait() }
        condition.unlock()
    }
}
