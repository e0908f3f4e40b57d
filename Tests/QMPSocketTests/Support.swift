import Foundation
import Glibc
import HostIO
import QMP
import QMPSocket
import Synchronization
import Testing

/// A pipe: bytes written to `write` come out of `read`; `read` sees the end
/// once every copy of `write` (ours and any passed) is closed.
struct Pipe {
    let read: Int32, write: Int32
    init() {
        var ends: [Int32] = [-1, -1]
        precondition(pipe(&ends) == 0)
        (read, write) = (ends[0], ends[1])
    }

    /// Whether every copy of the write end is closed: a read sees the end of
    /// the stream (waiting up to `milliseconds` for a close in flight).
    func writersGone(within milliseconds: Int32 = 2000) -> Bool {
        var probe = pollfd(fd: read, events: Int16(POLLIN), revents: 0)
        guard poll(&probe, 1, milliseconds) == 1 else { return false }
        var byte: UInt8 = 0
        return Glibc.read(read, &byte, 1) == 0
    }
}

/// What the fake machine saw: each command and the descriptor it came with (taken).
final class Recorder: Sendable {
    let seen = Mutex<[(QMPCommand, Int32?)]>([])
    let delay: TimeInterval

    init(delay: TimeInterval = 0) { self.delay = delay }

    var executor: QMPServer.Executor {
        { [self] command, descriptor in
            if delay > 0 { Thread.sleep(forTimeInterval: delay) }
            seen.withLock { $0.append((command, descriptor?.take())) }
            return .success(.object([:]))
        }
    }

    var descriptors: [Int32?] { seen.withLock { $0.map(\.1) } }
}

/// A QMP client on a raw socket, past negotiation.
final class Client {
    let socket: UnixSocketConnection
    var buffered: [UInt8] = []

    init(_ path: String) throws {
        socket = try UnixSocketConnection.connect(to: path)
        #expect(try line().contains("\"QMP\""))
        try send(#"{"execute":"qmp_capabilities"}"#)
        #expect(try line() == #"{"return":{}}"#)
    }

    /// A client on `socket` that has read nothing yet (not even the greeting).
    init(raw socket: UnixSocketConnection) { self.socket = socket }

    func send(_ text: String, passing descriptors: [Int32] = []) throws {
        try socket.send(Array(text.utf8), passing: descriptors)
    }

    /// qemu.qmp's `send_fd_scm`: one space carrying the descriptor.
    func sendDescriptor(_ descriptor: Int32) throws { try socket.send([0x20], passing: [descriptor]) }

    func line() throws -> String {
        while true {
            if let end = buffered.firstIndex(of: 0x0a) {
                let text = String(decoding: buffered[..<end], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                buffered.removeFirst(end + 1)
                return text
            }
            let message = try socket.receive()
            guard !message.bytes.isEmpty else { return "" }
            buffered += message.bytes
        }
    }
}

func socketPath() -> String { "/tmp/ferry-qmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

/// The numbers of this process's open descriptors.
func openDescriptors() -> Set<Int32> {
    Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) })
}

/// A QMP server on a fresh socket path whose executor records what it gets.
struct Harness {
    let recorder: Recorder
    let path: String
    let server: QMPServer

    static func start(delay: TimeInterval = 0, outputLimit: Int = QMPServer.defaultOutputLimit,
                      connectionLimit: Int = QMPServer.defaultConnectionLimit) async throws -> Harness {
        let recorder = Recorder(delay: delay)
        let path = socketPath()
        let server = try await QMPServer.start(path: path, version: QMPVersion(major: 10, minor: 0, micro: 0, package: ""),
                                               execute: recorder.executor, outputLimit: outputLimit,
                                               connectionLimit: connectionLimit)
        return Harness(recorder: recorder, path: path, server: server)
    }

    func client() throws -> Client { try Client(path) }
}

