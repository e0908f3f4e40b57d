import Foundation
import Synchronization

/// The destination's barrier at each multifd `sync`: a channel that reaches
/// its sync for epoch `e` waits until every channel has reached its own, so
/// no page of epoch `e` is applied while one of an older epoch may still come.
final class SyncBarrier: Sendable {
    struct State {
        var arrived = 0
        /// The last epoch every party reached.
        var passed: UInt64 = 0
        var aborted = false
        /// Parties that read their end: no sync can pass after one has.
        var left = 0
    }
    let parties: Int
    let state = Mutex(State())
    let condition = NSCondition()
    /// Told, by the last channel to arrive and outside the barrier's lock, that epoch `e` passed.
    let onPassed: @Sendable (UInt64) -> Void

    init(parties: Int, onPassed: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        self.parties = parties
        self.onPassed = onPassed
    }

    /// Waits until all parties arrived at `epoch` (the one after the last passed);
    /// throws `.cancelled` if the load is abandoned meanwhile.
    func arrive(epoch: UInt64) throws(MigrationError) {
        if try wait(epoch) { onPassed(epoch) }
    }

    /// The barrier itself; `true` for the party that completed it.
    private func wait(_ epoch: UInt64) throws(MigrationError) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let last = try state.withLock { s throws(MigrationError) -> Bool in
            if s.aborted { throw .cancelled }
            guard s.left == 0 else { throw .stream(.unexpectedFrame("a sync for epoch \(epoch) after another multifd channel ended")) }
            guard epoch == s.passed + 1 else {
                throw .stream(.unexpectedFrame("a sync for epoch \(epoch) while epoch \(s.passed + 1) was due"))
            }
            s.arrived += 1
            guard s.arrived == parties else { return false }
            s.arrived = 0
            s.passed = epoch
            return true
        }
        if last {
            condition.broadcast()
            return true
        }
        while true {
            let (passed, aborted) = state.withLock { ($0.passed >= epoch, $0.aborted) }
            if passed { return false }
            if aborted { throw .cancelled }
            condition.wait()
        }
    }

    /// A party read its end.  Throws if another waits at a sync this one never
    /// sent (it would wait for ever); a later `arrive` throws too.
    func leave() throws(MigrationError) {
        try state.withLock { s throws(MigrationError) in
            s.left += 1
            guard s.arrived == 0 else {
                throw .stream(.unexpectedFrame("a multifd channel ended while another waits at the sync for epoch \(s.passed + 1)"))
            }
        }
    }

    /// Releases every waiter with `.cancelled` (the load failed).
    func abort() {
        condition.lock()
        state.withLock { $0.aborted = true }
        condition.broadcast()
        condition.unlock()
    }
}

extension NSCondition {
    /// Wakes every thread waiting on this condition (the multifd threads and the picker
    /// re-check their state after each change of it).
    func wakeAll() {
        lock()
        broadcast()
        unlock()
    }
}
