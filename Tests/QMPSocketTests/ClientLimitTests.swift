import Foundation
import HostIO
import QMPSocket
import Synchronization
import Testing

/// What one client may take from the server: unread output and connections.
@Suite("QMP client limits", .serialized)
struct ClientLimitTests {
    /// Reads lines until the end of the stream on a thread of its own, so the
    /// wait has a deadline; the lines read, or nil if the end did not come in time.
    static func linesUntilEnd(of client: Client, within seconds: Int) -> Int? {
        nonisolated(unsafe) let reading = client
        let count = Mutex<Int?>(nil)
        let ended = DispatchSemaphore(value: 0)
        Thread {
            var lines = 0
            while let line = try? reading.line(), !line.isEmpty { lines += 1 }
            count.withLock { $0 = lines }
            ended.signal()
        }.start()
        guard ended.wait(timeout: .now() + .seconds(seconds)) == .success else {
            client.socket.shutdown()    // ends the reader
            _ = ended.wait(timeout: .now() + 5)
            return nil
        }
        return count.withLock { $0 }
    }

    @Test("a client that reads none of its replies is closed once they pass the output limit")
    func unreadOutputIsBounded() async throws {
        let harness = try await Harness.start(outputLimit: 64 << 10)
        let stalled = try harness.client()
        // 50 000 replies of about 16 bytes: far past 64 KiB and the socket's buffers.
        try? stalled.send(String(repeating: #"{"execute":"query-status"}"#, count: 50_000))
        // Read nothing until the server has stopped running them (all done, or the connection closed).
        var executed = -1, steady = 0
        for _ in 0..<300 where steady < 3 {
            try await Task.sleep(for: .milliseconds(100))
            let now = harness.recorder.seen.withLock { $0.count }
            (steady, executed) = now == executed ? (steady + 1, now) : (0, now)
        }
        // Without the limit the replies would all be queued and the connection kept.
        let lines = Self.linesUntilEnd(of: stalled, within: 10)
        #expect(lines != nil, "the connection was not closed")
        #expect((lines ?? 50_000) < 50_000)
        // A dropped client's commands still in its socket are not run: those run are the
        // replies it read, those the limit held (64 KiB of 15-byte replies), and a few the
        // reader ran while the event loop closed the channel (seen: 4650 run, 278 read).
        // Its reader once drained the socket after the drop, running what was there (8433).
        let held = (64 << 10) / #"{"return":{}}"#.utf8.count + 2
        #expect(executed <= (lines ?? 0) + held + 1000, "the commands in a dropped client's socket were run: \(executed)")
        // The server goes on serving others.
        let other = try harness.client()
        try other.send(#"{"execute":"query-status","id":1}"#)
        #expect(try other.line().contains(#""id":1"#))
        stalled.socket.close()
        other.socket.close()
        await harness.server.shutdown()
    }

    @Test("a client past the connection limit is told so and closed; a place freed is taken again")
    func connectionsAreBounded() async throws {
        let harness = try await Harness.start(connectionLimit: 2)
        let first = try harness.client()
        let second = try harness.client()
        let third = try UnixSocketConnection.connect(to: harness.path)
        let refused = Client(raw: third)
        #expect(try refused.line().contains("too many QMP clients: 2 are connected"))
        #expect(try refused.line() == "")
        third.close()
        // Once a client leaves, a new one is served (its reader ends a moment after the close).
        first.socket.close()
        var served: Client?
        for _ in 0..<50 where served == nil {
            try await Task.sleep(for: .milliseconds(40))
            let socket = try UnixSocketConnection.connect(to: harness.path)
            let candidate = Client(raw: socket)
            if try candidate.line().contains("\"QMP\"") { served = candidate } else { socket.close() }
        }
        #expect(served != nil)
        try served?.send(#"{"execute":"qmp_capabilities","id":2}"#)
        #expect(try served?.line().contains(#""return":{}"#) == true)
        served?.socket.close()
        second.socket.close()
        await harness.server.shutdown()
    }
}
