import Foundation
import QMPSocket
import Synchronization
import Testing

/// One client that stops reading its replies holds nobody else's commands.
@Suite("a QMP client that does not read", .serialized)
struct StalledClientTests {
    @Test("another client's command is answered while one sends thousands and reads none")
    func othersAreAnswered() async throws {
        let harness = try await Harness.start()
        let stalled = try harness.client()
        // Far more replies than the socket's buffers hold (about 16 bytes each).
        try stalled.send(String(repeating: #"{"execute":"query-status"}"#, count: 50_000))
        try await Task.sleep(for: .milliseconds(500))
        let other = try harness.client()
        try other.send(#"{"execute":"query-status","id":7}"#)
        // Read on a thread of its own, so the wait has a deadline; the test touches it only after.
        nonisolated(unsafe) let reading = other
        let reply = Mutex<String?>(nil)
        let answered = DispatchSemaphore(value: 0)
        Thread {
            let line = try? reading.line()
            reply.withLock { $0 = line }
            answered.signal()
        }.start()
        let inTime = answered.wait(timeout: .now() + 10) == .success
        #expect(inTime, "no answer within 10 s while the other client did not read")
        // (Before the fix it came only once the stalled client went away.)
        stalled.socket.close()
        if !inTime { _ = answered.wait(timeout: .now() + 10) }
        #expect(reply.withLock { $0 }?.contains(#""id":7"#) == true)
        other.socket.close()
        await harness.server.shutdown()
    }
}
