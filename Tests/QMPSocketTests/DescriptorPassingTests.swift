import Foundation
import Glibc
import QMPSocket
import Testing

@Suite("descriptors passed on the QMP socket (SCM_RIGHTS), as qemu.qmp's send_fd_scm passes them", .serialized)
struct DescriptorPassingTests {
    @Test("getfd gets the descriptor passed before it; getfd with none gets nil")
    func getfdTakesThePassedDescriptor() async throws {
        let harness = try await Harness.start()
        let (recorder, server, client) = (harness.recorder, harness.server, try harness.client())
        let pipe = Pipe()
        try client.sendDescriptor(pipe.write)
        try client.send(#"{"execute":"getfd","arguments":{"fdname":"mig"}}"#)
        #expect(try client.line() == #"{"return":{}}"#)
        try client.send(#"{"execute":"getfd","arguments":{"fdname":"again"}}"#)
        #expect(try client.line() == #"{"return":{}}"#)
        let got = recorder.descriptors
        #expect(got.count == 2 && got[1] == nil)
        let passed = try #require(got.first ?? nil)
        // The descriptor the machine got is the pipe: what it writes comes out of our end.
        #expect(Glibc.write(passed, "hi", 2) == 2)
        var bytes = [UInt8](repeating: 0, count: 2)
        #expect(Glibc.read(pipe.read, &bytes, 2) == 2 && bytes == Array("hi".utf8))
        #expect(fcntl(passed, F_GETFD) & FD_CLOEXEC != 0)
        close(passed)
        close(pipe.write)
        #expect(pipe.writersGone())
        close(pipe.read)
        client.socket.close()
        await server.shutdown()
    }

    @Test("a libvirt-style message carries the descriptor with the command's own bytes")
    func descriptorWithTheCommand() async throws {
        let harness = try await Harness.start()
        let (recorder, server, client) = (harness.recorder, harness.server, try harness.client())
        let pipe = Pipe()
        try client.send(#"{"execute":"add-fd","arguments":{"fdset-id":1}}"#, passing: [pipe.write])
        #expect(try client.line() == #"{"return":{}}"#)
        let passed = try #require(recorder.descriptors.first ?? nil)
        close(passed)
        close(pipe.write)
        #expect(pipe.writersGone())
        close(pipe.read)
        client.socket.close()
        await server.shutdown()
    }

    @Test("commands decoded in order get the descriptors sent in order, however slowly earlier ones run")
    func pipelined() async throws {
        let harness = try await Harness.start(delay: 0.1)
        let (recorder, server, client) = (harness.recorder, harness.server, try harness.client())
        let first = Pipe(), second = Pipe()
        try client.sendDescriptor(first.write)
        try client.send(#"{"execute":"getfd","arguments":{"fdname":"a"}}"#)
        try client.sendDescriptor(second.write)
        try client.send(#"{"execute":"getfd","arguments":{"fdname":"b"}}"#)
        #expect(try client.line() == #"{"return":{}}"#)
        #expect(try client.line() == #"{"return":{}}"#)
        let got = recorder.descriptors.compactMap { $0 }
        try #require(got.count == 2)
        #expect(Glibc.write(got[0], "a", 1) == 1 && Glibc.write(got[1], "b", 1) == 1)
        var byte: UInt8 = 0
        #expect(Glibc.read(first.read, &byte, 1) == 1 && byte == UInt8(ascii: "a"))
        #expect(Glibc.read(second.read, &byte, 1) == 1 && byte == UInt8(ascii: "b"))
        for fd in got + [first.write, first.read, second.write, second.read] { close(fd) }
        client.socket.close()
        await server.shutdown()
    }

    @Test("descriptors no command takes are closed: replaced by a later message's, the rest of a message's, and at disconnect")
    func unclaimedAreClosed() async throws {
        let before = openDescriptors()
        let harness = try await Harness.start()
        let (recorder, server, client) = (harness.recorder, harness.server, try harness.client())
        let replaced = Pipe(), taken = Pipe(), extra = Pipe(), stranded = Pipe()
        try client.sendDescriptor(replaced.write)
        try client.socket.send([0x20], passing: [taken.write, extra.write])
        try client.send(#"{"execute":"getfd","arguments":{"fdname":"x"}}"#)
        #expect(try client.line() == #"{"return":{}}"#)
        try client.sendDescriptor(stranded.write)
        try client.send(#"{"execute":"query-status"}"#)          // takes no descriptor
        #expect(try client.line() == #"{"return":{}}"#)
        for pipe in [replaced, taken, extra, stranded] { close(pipe.write) }
        #expect(replaced.writersGone())         // a later message replaced it
        #expect(extra.writersGone())            // getfd took the first of its message
        client.socket.close()                   // the stranded one dies with the connection
        #expect(stranded.writersGone())
        let passed = try #require(recorder.descriptors.first ?? nil)
        close(passed)
        #expect(taken.writersGone())
        for pipe in [replaced, taken, extra, stranded] { close(pipe.read) }
        await server.shutdown()
        #expect(openDescriptors().subtracting(before).isEmpty, "left open: \(openDescriptors().subtracting(before))")
    }

    @Test("hostile input: garbage, a descriptor with a bad command, and an oversized text never crash the server")
    func hostile() async throws {
        let harness = try await Harness.start()
        let (recorder, server, client) = (harness.recorder, harness.server, try harness.client())
        let pipe = Pipe()
        try client.send(#"{"execute":"getfd","arguments":{"fdname":3}}"#, passing: [pipe.write])
        #expect(try client.line() == #"{"error":{"class":"GenericError","desc":"Invalid parameter type for 'fdname', expected: string"}}"#)
        try client.send(#"{"execute":"getfd"}"#)
        #expect(try client.line() == #"{"error":{"class":"GenericError","desc":"Parameter 'fdname' is missing"}}"#)
        try client.send(#"{"execute":"add-fd","arguments":{"fdset-id":"1"}}"#)
        #expect(try client.line() == #"{"error":{"class":"GenericError","desc":"Invalid parameter type for 'fdset-id', expected: integer"}}"#)
        // The server drops a connection that sends more than 1 MiB of one text (the send may see it go).
        try? client.socket.send(Array(repeating: UInt8(ascii: "["), count: 1 << 21))
        while let line = try? client.line(), !line.isEmpty {}
        close(pipe.write)
        #expect(pipe.writersGone())
        close(pipe.read)
        #expect(recorder.descriptors.isEmpty)
        // Still serving.
        _ = try harness.client()
        await server.shutdown()
    }
}
