import Glibc
import Migration
import Synchronization
import Testing
@testable import Transport

/// A channel's doorbell: a wait for room to write also ends when it rings
/// (postcopy's migration thread waits so, and a page request rings).
@Suite struct DoorbellTests {
    /// Fills `channel`'s socket until a write would block, so it does not poll writable.
    static func fill(_ channel: DescriptorChannel) {
        let flags = fcntl(channel.descriptor, F_GETFL)
        #expect(fcntl(channel.descriptor, F_SETFL, flags | O_NONBLOCK) == 0)
        let chunk = [UInt8](repeating: 0xA5, count: 64 << 10)
        var rounds = 0
        while rounds < 100_000, chunk.withUnsafeBytes({ Glibc.write(channel.descriptor, $0.baseAddress!, $0.count) }) > 0 { rounds += 1 }
        #expect(errno == EAGAIN, "filled until the socket would block")
        #expect(fcntl(channel.descriptor, F_SETFL, flags) == 0)
    }

    @Test func aRingEndsAWaitForRoomAndTheWaitSaysNotWritable() throws {
        let (writer, reader) = try Kit.socketPair()
        defer { writer.close(); reader.close() }
        Self.fill(writer)
        #expect(try writer.waitWritable(timeout: .zero) == false)
        let doorbell = try #require(writer.makeDoorbell())
        let ringer = WorkerThread {
            usleep(100_000)
            doorbell.ring()
        }
        let start = ContinuousClock.now
        // Without the doorbell this wait would last its full minute.
        #expect(try writer.waitWritable(timeout: .seconds(60), orRung: doorbell) == false)
        #expect(ContinuousClock.now - start < .seconds(30))
        #expect(ringer.wait() == nil)
    }

    @Test func aRingBeforeTheWaitIsKeptAndConsumedOnce() throws {
        let (writer, reader) = try Kit.socketPair()
        defer { writer.close(); reader.close() }
        Self.fill(writer)
        let doorbell = try #require(writer.makeDoorbell())
        doorbell.ring()
        doorbell.ring()
        let start = ContinuousClock.now
        #expect(try writer.waitWritable(timeout: .seconds(60), orRung: doorbell) == false)
        #expect(ContinuousClock.now - start < .seconds(30))
        // Both rings were consumed by that one wait.
        #expect(doorbell.wait(timeout: .zero) == false)
        #expect(try writer.waitWritable(timeout: .milliseconds(20), orRung: doorbell) == false)
    }

    @Test func aWritableChannelSaysSoAtOnceAndLeavesARingForLater() throws {
        let (writer, reader) = try Kit.socketPair()
        defer { writer.close(); reader.close() }
        let doorbell = try #require(writer.makeDoorbell())
        #expect(try writer.waitWritable(timeout: .seconds(60), orRung: doorbell) == true)
        doorbell.ring()
        #expect(doorbell.wait(timeout: .seconds(60)) == true)
        #expect(doorbell.wait(timeout: .zero) == false)
    }
}
