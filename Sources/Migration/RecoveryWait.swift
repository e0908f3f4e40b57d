import Dispatch
import Synchronization

/// Where a paused postcopy waits for its way back: on the destination the
/// listener `migrate-recover` names, on the source the opener of `migrate`
/// with `resume: true`.  The item offered is handed to the migration's own
/// thread, which blocks in `take`.  An item offered while another is pending
/// or in use replaces it (a listener nobody connected to, as QEMU lets
/// `migrate-recover` be run again while still paused): a pending one is
/// closed, one in use interrupted (an `accept` blocked on it fails) and closed
/// by its thread.  `abandon` (the machine quits, or the load can no longer go
/// on) ends the wait for good.
final class RecoveryWait<Item: Sendable>: Sendable {
    struct State {
        /// Offered, not yet taken.
        var pending: Item?
        /// Taken: in use by the migration's thread until `release`.
        var inUse: Item?
        var abandoned = false
        /// Why the migration is paused (`error-desc`), while it is.
        var reason: String?
    }
    let state = Mutex(State())
    private let offered = DispatchSemaphore(value: 0)
    private let close: @Sendable (Item) -> Void
    private let interrupt: @Sendable (Item) -> Void

    /// `close`: what ends an item replaced or never used; `interrupt`: what
    /// stops one in use by the migration's thread (which then `release`s it:
    /// only that thread closes it, so no descriptor is closed under it).
    init(close: @escaping @Sendable (Item) -> Void, interrupt: @escaping @Sendable (Item) -> Void) {
        (self.close, self.interrupt) = (close, interrupt)
    }

    /// Offers `item`; one pending is closed, one in use interrupted.  After
    /// `abandon`, `item` is closed at once.
    func offer(_ item: Item) {
        let (pending, inUse, abandoned) = state.withLock { s -> (Item?, Item?, Bool) in
            guard !s.abandoned else { return (nil, nil, true) }
            defer { s.pending = item }
            return (s.pending, s.inUse, false)
        }
        if abandoned {
            close(item)
            return
        }
        if let pending { close(pending) }
        if let inUse { interrupt(inUse) }
        offered.signal()
    }

    /// Closes an item offered and not taken (the migration no longer waits for one).
    func dropPending() {
        if let pending = state.withLock({ s -> Item? in defer { s.pending = nil }; return s.pending }) { close(pending) }
    }

    /// Blocks until an item is offered, and takes it; nil once abandoned.
    func take() -> Item? {
        while true {
            let outcome = state.withLock { s -> Item?? in
                if s.abandoned { return .some(nil) }
                guard let item = s.pending else { return nil }
                (s.pending, s.inUse) = (nil, item)
                return .some(item)
            }
            if let outcome { return outcome }
            offered.wait()
        }
    }

    /// Whether the item taken last has been replaced (or the wait abandoned) since.
    var replaced: Bool { state.withLock { $0.pending != nil || $0.abandoned } }

    /// The item taken is done with (it worked, or failed): closed, by the thread that took it.
    func release(_ item: Item) {
        state.withLock { $0.inUse = nil }
        close(item)
    }

    var isAbandoned: Bool { state.withLock { $0.abandoned } }

    var reason: String? {
        get { state.withLock { $0.reason } }
        set { state.withLock { $0.reason = newValue } }
    }

    /// No recovery will come: the wait ends; an item pending is closed, one in use interrupted.
    func abandon() {
        let (pending, inUse) = state.withLock { s -> (Item?, Item?) in
            s.abandoned = true
            defer { s.pending = nil }
            return (s.pending, s.inUse)
        }
        if let pending { close(pending) }
        if let inUse { interrupt(inUse) }
        offered.signal()
    }
}
