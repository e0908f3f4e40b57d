@testable import Migration
import Testing

/// The background snapshot's queue of copies from the write-fault handler.
@Suite("the fault handler's copy queue")
struct FaultCopiesTests {
    @Test("a queue that never empties holds only what is queued: taken copies are let go")
    func takenCopiesAreReleased() {
        let copies = FaultCopies(capacity: 1 << 20)
        // One copy always waiting while the writer takes the older ones, as
        // under a guest that keeps writing faster than the stream drains.
        #expect(copies.reserve(4096))
        copies.push(FaultCopy(block: 0, offset: 0, bytes: [UInt8](repeating: 1, count: 4096)))
        var outOfOrder = 0
        for round in 1...10_000 {
            guard copies.reserve(4096) else { break }
            copies.push(FaultCopy(block: 0, offset: round * 4096, bytes: [UInt8](repeating: 2, count: 4096)))
            let taken = copies.take(maxBytes: 4096)
            if taken.map(\.offset) != [(round - 1) * 4096] { outOfOrder += 1 }
            copies.written(4096)
        }
        #expect(outOfOrder == 0)
        // Before, the queue kept every copy ever taken (and its bytes) until it emptied.
        #expect(copies.count == 1)
        #expect(copies.take(maxBytes: 1 << 20).map(\.offset) == [10_000 * 4096])
        #expect(copies.isEmpty)
    }
}
