import Dispatch
@testable import Migration
import Testing
import Transport

/// The preempt and multifd channels' handshakes are bounded like the main channel's.
@Suite struct ChannelHandshakeTests {
    @Test("a preempt connection that opens and says nothing is dropped within the channel timeout, with the reason")
    func silentConnection() throws {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let client = try Transport.connect(listener.address)      // connects, never writes
        // Without a limit the read would wait for ever; the client's close after 3 s ends it with another error.
        DispatchQueue.global().asyncAfter(deadline: .now() + 3) { client.close() }
        let limit = Duration.milliseconds(300)
        let started = ContinuousClock.now
        #expect(throws: MigrationError.channel(.timedOut("the postcopy preempt connection sent no stream header within \(limit)"))) {
            _ = try PreemptReceiver.accept(migrationID: [UInt8](repeating: 1, count: 16), from: listener, timeout: limit)
        }
        #expect(ContinuousClock.now - started < .seconds(2))
    }

    @Test("a multifd connection that opens and says nothing is dropped within what is left of the timeout")
    func silentMultifdConnection() throws {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let client = try Transport.connect(listener.address)
        DispatchQueue.global().asyncAfter(deadline: .now() + 5) { client.close() }
        let started = ContinuousClock.now
        #expect(throws: MigrationError.channel(.timedOut("the multifd connection sent no stream header within \(Duration.seconds(1))"))) {
            _ = try MultifdReceivers.accept(2, migrationID: [UInt8](repeating: 1, count: 16), from: listener, timeout: .milliseconds(300))
        }
        #expect(ContinuousClock.now - started < .seconds(3))
    }
}
