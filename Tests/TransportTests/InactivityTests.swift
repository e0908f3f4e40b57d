import Glibc
import GuestMemory
import Migration
import Testing
@testable import Transport

/// x-inactivity-limit over a migration's channels together: a quiet channel
/// waits while another that shares its activity receives, and fails once all
/// are quiet for the limit.
@Suite struct InactivityTests {
    static let limit: Duration = .milliseconds(100)
    static let busySpan: Duration = .milliseconds(600)

    /// Two channels with a 100 ms limit, sharing one activity or not; while a
    /// few bytes arrive on the busy one every 20 ms for 600 ms (read on a thread
    /// of its own), runs `read` on the quiet one.  Returns how long `read` took
    /// and the shared activity.
    static func readQuiet(sharing: Bool, _ read: (DescriptorChannel) throws -> Void) throws -> (Duration, ChannelActivity?) {
        let (quietWriter, quiet) = try Kit.socketPair()
        let (busyWriter, busy) = try Kit.socketPair()
        defer { quietWriter.close(); quiet.close(); busy.close() }
        let activity = sharing ? ChannelActivity() : nil
        quiet.limitInactivity(limit, sharing: activity)
        busy.limitInactivity(limit, sharing: activity)
        let start = ContinuousClock.now
        let sending = WorkerThread {
            while ContinuousClock.now - start < busySpan {
                try busyWriter.write([1, 2, 3, 4])
                usleep(20_000)
            }
            busyWriter.close()
        }
        let receiving = WorkerThread {
            var buffer = [UInt8](repeating: 0, count: 64)
            while try busy.read(upTo: 64, into: &buffer, at: 0) > 0 {}
        }
        try read(quiet)
        let waited = ContinuousClock.now - start
        #expect(sending.wait() == nil)
        #expect(receiving.wait() == nil)
        return (waited, activity)
    }

    @Test("a read on a quiet channel waits while a channel sharing its activity receives, then fails with .inactive")
    func sharedActivityKeepsAQuietChannelWaiting() throws {
        let (waited, activity) = try Self.readQuiet(sharing: true) { quiet in
            var buffer = [UInt8](repeating: 0, count: 16)
            #expect(throws: ChannelError.inactive(Self.limit)) { _ = try quiet.read(upTo: 16, into: &buffer, at: 0) }
        }
        #expect(waited >= Self.busySpan, "waited while the other channel received")
        #expect(waited < .milliseconds(1500), "failed soon after both were quiet")
        #expect((activity?.bytes ?? 0) >= 4 * 20, "the busy channel's bytes were counted")
    }

    @Test("a scatter read into guest memory waits the same way")
    func sharedActivityKeepsAScatterReadWaiting() throws {
        let mapping = try HostMapping(byteCount: 4096, backend: .anon)
        var list = ScatterList()
        list.append(mapping, offset: 0, count: 4096)
        let (waited, _) = try Self.readQuiet(sharing: true) { quiet in
            #expect(throws: ChannelError.inactive(Self.limit)) { try quiet.read(into: list) }
        }
        #expect(waited >= Self.busySpan)
    }

    @Test("without a shared activity, a quiet channel fails after its own limit whatever the others receive")
    func unsharedChannelsTimeOutAlone() throws {
        let (waited, _) = try Self.readQuiet(sharing: false) { quiet in
            var buffer = [UInt8](repeating: 0, count: 16)
            #expect(throws: ChannelError.inactive(Self.limit)) { _ = try quiet.read(upTo: 16, into: &buffer, at: 0) }
        }
        #expect(waited < .milliseconds(500))
    }

    @Test("a write the other side never makes room for fails after the limit (a source that never reads the return path)")
    func writeWithoutRoomFails() throws {
        let (peer, channel) = try Kit.socketPair()
        defer { peer.close(); channel.close() }
        channel.limitInactivity(Self.limit)
        // Far more than the socket's buffers hold; the peer reads nothing.
        let writing = WorkerThread { try channel.write([UInt8](repeating: 7, count: 64 << 20)) }
        let start = ContinuousClock.now
        let error = writing.wait()
        // Before, the write waited for ever (the worker's 30 s deadline ran out).
        #expect(ContinuousClock.now - start < .seconds(10))
        #expect(error?.description.contains("the other side took nothing for 0.1 seconds") == true, "\(String(describing: error))")
    }
}
