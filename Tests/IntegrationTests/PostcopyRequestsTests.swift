import Foundation
import MigrationProtocol
import Synchronization
import Testing
@testable import Migration

/// The source's page requests: queued, they ring the migration thread's
/// doorbell as each arrives, so a thread waiting to write background pages
/// serves it at once; with a server installed (a preempt channel), each is
/// served on the thread it arrives on, and never by two threads at once.
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

    /// Records what it serves, and on which thread.
    final class RecordingServer: Sendable {
        let served = Mutex<[(PostcopyRequests.Request, Bool)]>([])
        var requests: [PostcopyRequests.Request] { served.withLock { $0.map(\.0) } }
        var onMainThread: [Bool] { served.withLock { $0.map(\.1) } }
        func serve(_ request: PostcopyRequests.Request) { served.withLock { $0.append((request, Thread.isMainThread)) } }
    }

    @Test func withAServerEachRequestIsServedWhereItArrivesAndNotQueued() throws {
        let requests = Self.queue()
        let bell = CountingDoorbell()
        requests.ringOnArrival(bell)
        let server = RecordingServer()
        try requests.serveOnArrival { server.serve($0) }
        #expect(requests.add(block: 0, offset: 4096, length: 4096))
        #expect(requests.add(block: 0, offset: 8192, length: 4096))
        #expect(server.requests == [.init(block: 0, pages: 1..<2), .init(block: 0, pages: 2..<3)])
        #expect(try requests.take() == nil)
        #expect(bell.count == 0)                 // nothing for the migration thread to do
        #expect(requests.received == 2)
        requests.stopServing()
        #expect(requests.add(block: 0, offset: 12288, length: 4096))
        #expect(server.requests.count == 2)      // queued again
        #expect(try requests.take() == .init(block: 0, pages: 3..<4))
    }

    @Test func requestsQueuedBeforeTheServerAreServedFirstOnTheInstallingThread() throws {
        let requests = Self.queue()
        #expect(requests.add(block: 0, offset: 0, length: 4096))
        #expect(requests.add(block: 0, offset: 4096, length: 4096))
        let server = RecordingServer()
        let installer = Thread {
            try? requests.serveOnArrival { server.serve($0) }
        }
        installer.start()
        let deadline = Date().addingTimeInterval(5)
        while server.requests.count < 2 && Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
        // Served by the installing thread, in order, and taken out of the queue.
        #expect(server.requests == [.init(block: 0, pages: 0..<1), .init(block: 0, pages: 1..<2)])
        #expect(server.onMainThread == [false, false])
        #expect(try requests.take() == nil)
    }

    @Test func aServingFailureIsKeptRingsAndFailsTheMigrationThreadsTake() {
        let requests = Self.queue()
        let bell = CountingDoorbell()
        requests.ringOnArrival(bell)
        #expect(throws: Never.self) {
            try requests.serveOnArrival { _ throws(MigrationError) in throw .channel(.endOfStream) }
        }
        #expect(requests.add(block: 0, offset: 0, length: 4096))          // accepted; its sending failed
        #expect(bell.count == 1)
        #expect(throws: MigrationError.self) { try requests.take() }
        #expect(!requests.add(block: 0, offset: 4096, length: 4096))      // after a failure: refused
        #expect(throws: MigrationError.self) { try requests.serveOnArrival { _ in } }
    }

    final class Flag: Sendable {
        let value = Mutex(false)
        func set() { value.withLock { $0 = true } }
        var isSet: Bool { value.withLock { $0 } }
        /// Whether it was set within 5 s.
        @discardableResult
        func await() -> Bool {
            let deadline = Date().addingTimeInterval(5)
            while !isSet && Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
            return isSet
        }
    }

    @Test func stopServingWaitsForTheRequestBeingServed() throws {
        let requests = Self.queue()
        let (entered, release, finished) = (Flag(), Flag(), Flag())
        try requests.serveOnArrival { _ in
            entered.set()
            release.await()
            finished.set()
        }
        let reader = Thread { _ = requests.add(block: 0, offset: 0, length: 4096) }
        reader.start()
        try #require(entered.await())
        let releaser = Thread {
            Thread.sleep(forTimeInterval: 0.05)
            release.set()
        }
        releaser.start()
        requests.stopServing()
        #expect(finished.isSet)
    }

    @Test func stopServingGivesAServingFailureTheMigrationThreadHasNotSeen() throws {
        let requests = Self.queue()
        try requests.serveOnArrival { _ throws(MigrationError) in throw .channel(.endOfStream) }
        #expect(requests.add(block: 0, offset: 0, length: 4096))
        #expect(requests.stopServing() == .channel(.endOfStream))
    }

    @Test func aServeThatFailsBecauseServingWasAbandonedIsNotKept() throws {
        let requests = Self.queue()
        let (entered, release) = (Flag(), Flag())
        try requests.serveOnArrival { _ throws(MigrationError) in
            entered.set()
            release.await()
            throw .channel(.endOfStream)        // its channel was shut under it
        }
        let reader = Thread { _ = requests.add(block: 0, offset: 0, length: 4096) }
        reader.start()
        try #require(entered.await())
        requests.abandonServing { release.set() }
        #expect(requests.failure == nil, "the migration thread's own failure is the cause")
        #expect(try requests.take() == nil)
    }
    /// Counts the threads inside the server at once.
    final class Overlap: Sendable {
        let inside = Mutex((now: 0, most: 0))
        func enter() { inside.withLock { $0.now += 1; $0.most = max($0.most, $0.now) } }
        func leave() { inside.withLock { $0.now -= 1 } }
        var most: Int { inside.withLock { $0.most } }
    }

    @Test("two readers' threads (the main return path and the preempt channel's way back) never serve at once, and every request is served once")
    func twoReadersServeOneAtATime() throws {
        let requests = Self.queue()
        let (server, overlap) = (RecordingServer(), Overlap())
        try requests.serveOnArrival { request in
            overlap.enter()
            usleep(300)             // a send: long enough for the other reader's request to arrive meanwhile
            server.serve(request)
            overlap.leave()
        }
        let readers = [0..<32, 32..<64].map { pages in
            Thread { for page in pages { _ = requests.add(block: 0, offset: UInt64(page) * 4096, length: 4096) } }
        }
        for reader in readers { reader.start() }
        let deadline = Date().addingTimeInterval(10)
        while server.requests.count < 64 && Date() < deadline { Thread.sleep(forTimeInterval: 0.001) }
        requests.stopServing()
        #expect(overlap.most == 1, "one server at a time")
        #expect(server.requests.map(\.pages.lowerBound).sorted() == Array(0..<64), "each request served once")
        #expect(requests.received == 64)
        #expect(try requests.take() == nil)
    }

    @Test("a request handed over to the serving thread when serving stops goes to the queue, for the migration thread")
    func aHandedOverRequestIsQueuedWhenServingStops() throws {
        let requests = Self.queue()
        let (entered, release) = (Flag(), Flag())
        let server = RecordingServer()
        try requests.serveOnArrival { request in
            entered.set()
            release.await()
            server.serve(request)
        }
        let first = Thread { _ = requests.add(block: 0, offset: 0, length: 4096) }
        first.start()
        try #require(entered.await())
        #expect(requests.add(block: 0, offset: 4096, length: 4096))      // the other reader: handed over
        let stopped = Flag()
        let stopper = Thread {
            requests.stopServing()
            stopped.set()
        }
        stopper.start()
        Thread.sleep(forTimeInterval: 0.05)
        #expect(!stopped.isSet, "stopServing waits for the request being served")
        release.set()
        try #require(stopped.await())
        #expect(server.requests == [.init(block: 0, pages: 0..<1)])
        #expect(try requests.take() == .init(block: 0, pages: 1..<2))
        #expect(try requests.take() == nil)
    }
}
