import Foundation
import Glibc
import Migration
import Testing
import Transport

@Suite("incoming listeners: several connections, timeouts, close")
struct ListenerTests {
    @Test("one TCP listener accepts three connections; a fourth accept times out; after close connects fail")
    func threeThenTimeout() throws {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        let acceptor: any ChannelAcceptor = listener
        var clients: [DescriptorChannel] = []
        for index in 0..<3 {
            let client = try Transport.connect(listener.address)
            try client.write([UInt8(index)])
            clients.append(client)
        }
        var seen: [UInt8] = []
        for _ in 0..<3 {
            let channel = try acceptor.accept(timeout: .seconds(10))
            var byte: [UInt8] = [0xFF]
            try channel.readExactly(1, into: &byte, at: 0)
            seen.append(byte[0])
        }
        #expect(seen.sorted() == [0, 1, 2])

        let started = ContinuousClock.now
        #expect(throws: ChannelError.timedOut("no connection on \(listener.address) within \(Duration.milliseconds(200))")) {
            _ = try acceptor.accept(timeout: .milliseconds(200))
        }
        let waited = ContinuousClock.now - started
        #expect(waited >= .milliseconds(190) && waited < .seconds(5), "waited \(waited)")

        acceptor.close()
        acceptor.close()
        #expect(throws: ChannelError.self) { _ = try Transport.connect(listener.address) }
        #expect(throws: ChannelError.system("accept on \(listener.address): the listener is closed", errno: ECANCELED)) {
            _ = try listener.accept(timeout: .milliseconds(10))
        }
    }

    @Test("an accept blocked without a timeout ends when another thread closes the listener")
    func closeWakesAccept() throws {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        let worker = WorkerThread { _ = try listener.accept(timeout: nil) }
        usleep(100_000)
        listener.close()
        #expect(worker.wait() == .system("accept on \(listener.address): the listener is closed", errno: ECANCELED))
    }

    @Test("an accept blocked without a timeout ends when another thread interrupts the listener, on TCP and Unix sockets",
          arguments: ["tcp", "unix"])
    func interruptWakesAccept(_ kind: String) throws {
        let uri: MigrationURI = kind == "tcp" ? .tcp(host: "127.0.0.1", port: 0)
            : .unix(path: "/tmp/ferry-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock")
        let listener = try Transport.listen(uri)
        defer { listener.close() }
        let worker = WorkerThread { _ = try listener.accept(timeout: nil) }
        usleep(100_000)
        let interrupted = ContinuousClock.now
        listener.interrupt()
        // Interrupted, not closed: its owner closes it; the accept ends at once (a shut-down Unix
        // listener polls as hung up while accept says EAGAIN: it must not spin there).
        #expect(worker.wait() == .system("accept on \(listener.address): the listener is closed", errno: ECANCELED))
        #expect(ContinuousClock.now - interrupted < .seconds(2))
    }

    @Test("a Unix listener takes two connections, and close removes its path")
    func unixPath() throws {
        let path = "/tmp/ferry-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        let first = try Transport.connect(.unix(path: path)), second = try Transport.connect(.unix(path: path))
        defer { first.close(); second.close() }
        _ = try listener.accept(timeout: .seconds(10))
        _ = try listener.accept(timeout: .seconds(10))
        #expect(access(path, F_OK) == 0)
        listener.close()
        #expect(access(path, F_OK) != 0, "the socket path is gone")
        #expect(throws: ChannelError.self) { _ = try Transport.connect(.unix(path: path)) }
    }

    @Test("a Unix listener replaced on its path by a newer one leaves the newer one's path when it closes")
    func replacedUnixPath() throws {
        let path = "/tmp/ferry-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let older = try Transport.listen(.unix(path: path))
        let newer = try Transport.listen(.unix(path: path))     // migrate-recover on the same path again
        older.close()
        // Before, the older listener's close removed the path the newer one had bound.
        #expect(access(path, F_OK) == 0, "the newer listener's path is gone")
        let connection = try Transport.connect(.unix(path: path))
        defer { connection.close() }
        _ = try newer.accept(timeout: .seconds(10))
        newer.close()
        #expect(access(path, F_OK) != 0)
    }

    @Test("a file listener hands out its one channel, then says there is no other")
    func fileOnce() throws {
        let path = "/tmp/ferry-transport-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).state"
        try Transport.connect(.file(path: path)).write([1, 2, 3])
        defer { unlink(path) }
        let listener = try Transport.listen(.file(path: path))
        let channel = try listener.accept(timeout: .milliseconds(10))
        var bytes = [UInt8](repeating: 0, count: 3)
        try channel.readExactly(3, into: &bytes, at: 0)
        #expect(bytes == [1, 2, 3])
        #expect(throws: ChannelError.invalidURI("file:\(path) carries a single channel, and it has been accepted already (or the listener was closed)")) {
            _ = try listener.accept(timeout: nil)
        }
    }
}
