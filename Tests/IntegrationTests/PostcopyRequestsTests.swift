import MigrationProtocol
import Synchronization
import Testing
@testable import Migration

/// The source's queue of page requests rings the migration thread's doorbell
/// as each arrives, so a thread waiting to write background pages serves it at once.
@Suite struct PostcopyRequestsTests {
    final class CountingDoorbell: ChannelDoorbell {
        let rings = Mutex(0)
        func ring() { rings.withLock { $0 += 1 } }
        func wait(timeout: Duration) -> Bool { false }
        var count: Int { rings.withLock { $0 } }
    }

    static func queue() -> PostcopyRequests {
        let requests = PostcopyRequests(layout: [MigrationConfiguration.Block(name: "pc.ram", byteCount: 64 * 4096, pageSize: 4096)],
                                        unitBytes: [4096])
        requests.open()
        return requests
    }

    @Test func eachRequestRingsTheDoorbellInForce() throws {
        let requests = Self.queue()
        let bell = CountingDoorbell()
        #expect(requests.add(block: 0, offset: 0, length: 4096))     // no doorbell yet: nothing rings
        requests.ringOnArrival(bell)
        #expect(requests.add(block: 0, offset: 4096, length: 4096))
        #expect(requests.add(block: 0, offset: 8192, length: 4096))
        #expect(bell.count == 2)
        requests.ringOnArrival(nil)
        #expect(requests.add(block: 0, offset: 12288, length: 4096))
        #expect(bell.count == 2)
        #expect(try requests.take() == .init(block: 0, pages: 0..<1))
    }

    @Test func aRefusedRequestRingsTooSoTheWaitingThreadSeesTheFailure() {
        let requests = Self.queue()
        let bell = CountingDoorbell()
        requests.ringOnArrival(bell)
        #expect(!requests.add(block: 0, offset: 64 * 4096, length: 4096))      // past the block
        #expect(bell.count == 1)
        #expect(throws: MigrationError.self) { try requests.take() }
        #expect(!requests.add(block: 0, offset: 0, length: 4096))              // after a failure: refused, silent
        #expect(bell.count == 1)
    }
}
