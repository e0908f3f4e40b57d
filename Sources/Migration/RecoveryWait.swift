import Dispatch
import Synchronization

/// Where a paused postcopy waits for its way back: on the destination the
/// listener `migrate-recover` names, on the source the opener of `migrate`
/// with `resume: true`.  The item offered is handed to the migration's own
/// thread, which blocks in `take`.  An item offered while another is pending
/// or in use replaces it (the old one is closed: a listener nobody connected
/// to, as QEMU lets `migrate-recover` be run again while still paused; closing
/// it wakes an `accept` blocked on it).  `abandon` (the machine quits) ends the
/// wait for good.
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

    /// `close`: what ends an item replaced or never used.
    init(close: @escaping @Sendable (Item) -> Void) { self.close = close }

    /// Offers `item`; one pending or in use is closed.  After `abandon`, `item` is closed at once.
    func offer(_ item: Item) {
        let (replaced, abandoned) = state.withLock { s -> ([Item], Bool) in
            guard !s.abandoned else { return ([], true) }
            defer { (s.pending, s.inUse) = (item, nil) }
            return ([s.pending, s.inUse].compactMap { $0 }, false)
        }
        if abandoned {
            close(item)
            return
        }
        for old in replaced { close(old) }
        offered.signal()
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

    /// The item taken is done with (it worked, or failed): closed.
    func release(_ item: Item) {
        state.withLock { $0.inUse = nil }
        close(item)
    }

    var isAbandoned: Bool { state.withLock { $0.abandoned } }

    var reason: String? {
        get { state.withLock { $0.reason } }
        set { state.withLock { $0.reason = newValue } }
    }

    /// No recovery will come: the wait ends, and every item is closed.
    func abandon() {
        let open = state.withLock { s -> [Item] in
            s.abandoned = true
            defer { (s.pending, s.inUse) = (nil, nil) }
            return [s.pending, s.inUse].compactMap { $0 }
        }
        for item in open { close(item) }
        offered.signal()
    }
}
