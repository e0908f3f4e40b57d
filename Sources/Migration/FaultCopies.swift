import DequeModule
import Foundation

/// A protection unit copied out by the write-fault handler before it let the
/// guest write: the snapshot's view of that unit, waiting to be written.
struct FaultCopy: Sendable {
    let block: Int
    let offset: Int
    let bytes: [UInt8]
}

/// The copies the fault handler took, on their way to the writer: a queue
/// bounded in bytes.  When it is full the handler waits for room, and the
/// guest's write waits with it: that wait is what makes write faults slow
/// when the stream stalls, and what the scan limiter reacts to.
final class FaultCopies: @unchecked Sendable {
    // @unchecked: every field is guarded by `condition`.
    private let condition = NSCondition()
    // A deque: a taken copy's bytes are freed as it is taken, even when the
    // queue never empties (an array with a moving head kept them all).
    private var queue: Deque<FaultCopy> = []
    private var usedBytes = 0
    private var aborted = false
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Waits until `bytes` fit (or the queue is empty: one oversized unit always
    /// fits) and reserves them; false once aborted.
    func reserve(_ bytes: Int) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !aborted && usedBytes > 0 && usedBytes + bytes > capacity { condition.wait() }
        guard !aborted else { return false }
        usedBytes += bytes
        return true
    }

    /// Queues a copy whose bytes were reserved.
    func push(_ copy: FaultCopy) {
        condition.lock()
        queue.append(copy)
        condition.broadcast()
        condition.unlock()
    }

    /// Takes the queued copies, oldest first, up to about `maxBytes` (at least one).
    func take(maxBytes: Int) -> [FaultCopy] {
        condition.lock()
        defer { condition.unlock() }
        var taken: [FaultCopy] = []
        var bytes = 0
        while let first = queue.first, taken.isEmpty || bytes + first.bytes.count <= maxBytes {
            bytes += first.bytes.count
            taken.append(queue.removeFirst())
        }
        return taken
    }

    /// Copies written: their room is free again.
    func written(_ bytes: Int) {
        condition.lock()
        usedBytes -= bytes
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until a copy is queued or `timeout` passed; whether one is queued.
    func waitForCopies(timeout: Duration) -> Bool {
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        let deadline = Date(timeIntervalSinceNow: seconds)
        condition.lock()
        defer { condition.unlock() }
        while queue.isEmpty && !aborted {
            if !condition.wait(until: deadline) { break }
        }
        return !queue.isEmpty
    }

    var isEmpty: Bool {
        condition.lock()
        defer { condition.unlock() }
        return queue.isEmpty
    }

    /// Copies queued and not yet taken (what the queue holds).
    var count: Int {
        condition.lock()
        defer { condition.unlock() }
        return queue.count
    }

    /// No more room will come: a waiting handler gives up.
    func abort() {
        condition.lock()
        aborted = true
        condition.broadcast()
        condition.unlock()
    }
}
