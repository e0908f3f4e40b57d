import Foundation
@testable import Migration
import Synchronization
import Testing

/// The gate between a mapped-ram restore's readers and the thread that reads
/// and checks the checksum tables: a reader never checks pages against a table
/// not yet published, waits for it, and hears a failure instead of waiting forever.
@Suite struct ChecksumTablesTests {
    /// Waits until `done`, failing the test after `limit`.
    static func within(_ limit: Duration, _ done: () -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while !done() {
            guard ContinuousClock.now < deadline else {
                Issue.record("still waiting after \(limit)")
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test("a table is there once published, not before; a waiting reader gets it")
    func publishAndWait() async throws {
        let tables = ChecksumTables(blocks: 2)
        #expect(tables.checksumsIfReady(of: 0) == nil)
        let got = Mutex<[UInt64]?>(nil)
        let waiter = JoinableThread(name: "test-waiter") {
            let sums = try? tables.checksums(of: 1)
            got.withLock { $0 = sums }
        }
        try await Task.sleep(for: .milliseconds(50))
        #expect(got.withLock { $0 } == nil, "the wait returned before the table came")
        tables.publish(1, [7, 8, 9])
        try await Self.within(.seconds(10)) { got.withLock { $0 } != nil }      // a lost wakeup fails here, not hangs
        waiter.join()
        #expect(got.withLock { $0 } == [7, 8, 9])
        #expect(tables.checksumsIfReady(of: 0) == nil, "publishing one block's table publishes only that one")
        #expect(try tables.checksumsIfReady(of: 1)?.get() == [7, 8, 9])
    }

    @Test("a failure ends every wait with its error; a table already published stays usable")
    func failureEndsWaits() async throws {
        let tables = ChecksumTables(blocks: 2)
        tables.publish(0, [1])
        let error = MigrationError.stream(.malformed("block 'pc.ram': the bitmap or checksum table does not match its checksum: the file is corrupt"))
        let seen = Mutex<MigrationError?>(nil)
        let waiter = JoinableThread(name: "test-waiter") {
            do throws(MigrationError) { _ = try tables.checksums(of: 1) } catch { seen.withLock { $0 = error } }
        }
        try await Task.sleep(for: .milliseconds(50))
        tables.fail(error)
        try await Self.within(.seconds(10)) { seen.withLock { $0 } != nil }
        waiter.join()
        #expect(seen.withLock { $0 } == error)
        #expect(try tables.checksums(of: 0) == [1])
        #expect(throws: error) { try tables.checksums(of: 1) }
    }
}
