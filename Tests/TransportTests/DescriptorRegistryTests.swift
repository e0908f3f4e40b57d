import Foundation
import Glibc
import Migration
import Testing
import Transport

/// Glibc exports O_DIRECT only under _GNU_SOURCE: the kernel's value on x86-64.
private let O_DIRECT: Int32 = 0o40000

/// The write end of a pipe, to hand to the registry, and a way to tell from
/// the read end whether it has been closed (every copy of it: a read sees the
/// end at once).  Robust while other tests open descriptors: a closed number
/// may be reused, a pipe's end of stream may not be faked.
private struct Probe {
    let read: Int32, write: Int32

    init() {
        var ends: [Int32] = [-1, -1]
        precondition(pipe(&ends) == 0)
        (read, write) = (ends[0], ends[1])
    }

    var isClosed: Bool {
        var probe = pollfd(fd: read, events: Int16(POLLIN), revents: 0)
        guard poll(&probe, 1, 0) == 1 else { return false }
        var byte: UInt8 = 0
        return Glibc.read(read, &byte, 1) == 0
    }
}

@Suite("descriptor registry: named descriptors and descriptor sets, as QEMU's monitor/fds.c")
struct DescriptorRegistryTests {
    @Test("getfd names a descriptor, a second of the same name replaces (closes) it; fd:NAME takes it; closefd closes")
    func named() throws {
        let registry = DescriptorRegistry()
        let first = Probe(), second = Probe()
        try registry.addNamed("mig", descriptor: first.write)
        try registry.addNamed("mig", descriptor: second.write)
        #expect(first.isClosed && !second.isClosed)
        #expect(registry.hasNamed("mig") && registry.names == ["mig"])
        #expect(registry.takeNamed("mig") == second.write)
        #expect(registry.takeNamed("mig") == nil && !registry.hasNamed("mig"))
        #expect(!second.isClosed)     // taken: the caller's now
        close(second.write)
        #expect(second.isClosed)

        let third = Probe()
        try registry.addNamed("x", descriptor: third.write)
        try registry.closeNamed("x")
        #expect(third.isClosed)
        #expect(throws: DescriptorError.notFound("x")) { try registry.closeNamed("x") }
        #expect(DescriptorError.notFound("x").description == "File descriptor named 'x' not found")
    }

    @Test("a name that starts with a digit is refused, and the descriptor closed, as QEMU does")
    func digitName() {
        let registry = DescriptorRegistry()
        let probe = Probe()
        #expect(throws: DescriptorError.nameStartsWithDigit) { try registry.addNamed("3rd", descriptor: probe.write) }
        #expect(probe.isClosed)
        #expect(DescriptorError.nameStartsWithDigit.description == "Parameter 'fdname' expects a name not starting with a digit")
    }

    @Test("add-fd: the lowest free set id without one, an explicit id joins or makes its set, negative ids refused")
    func addToSets() throws {
        let registry = DescriptorRegistry()
        let (a, b, c, d, e) = (Probe().write, Probe().write, Probe().write, Probe().write, Probe().write)
        #expect(try registry.add(a, toFdset: nil, opaque: "rw") == 0)
        #expect(try registry.add(b, toFdset: 2, opaque: nil) == 2)
        #expect(try registry.add(c, toFdset: nil, opaque: nil) == 1)     // the gap
        #expect(try registry.add(d, toFdset: nil, opaque: nil) == 3)
        #expect(try registry.add(e, toFdset: 2, opaque: "direct") == 2)
        #expect(registry.fdsets == [
            .init(id: 0, members: [.init(descriptor: a, opaque: "rw")]),
            .init(id: 1, members: [.init(descriptor: c, opaque: nil)]),
            .init(id: 2, members: [.init(descriptor: b, opaque: nil), .init(descriptor: e, opaque: "direct")]),
            .init(id: 3, members: [.init(descriptor: d, opaque: nil)]),
        ])
        let refused = Probe()
        #expect(throws: DescriptorError.negativeFdsetID) { _ = try registry.add(refused.write, toFdset: -1, opaque: nil) }
        #expect(refused.isClosed)
        #expect(DescriptorError.negativeFdsetID.description == "Parameter 'fdset-id' expects a non-negative value")
    }

    @Test("remove-fd closes one descriptor or a whole set; unknown ones are named as QEMU names them")
    func remove() throws {
        let registry = DescriptorRegistry()
        let a = Probe(), b = Probe(), c = Probe()
        _ = try registry.add(a.write, toFdset: 5, opaque: nil)
        _ = try registry.add(b.write, toFdset: 5, opaque: nil)
        _ = try registry.add(c.write, toFdset: 6, opaque: nil)
        try registry.remove(fdset: 5, descriptor: Int64(a.write))
        #expect(a.isClosed && !b.isClosed)
        #expect(throws: DescriptorError.notFound("fdset-id:5, fd:\(c.write)")) { try registry.remove(fdset: 5, descriptor: Int64(c.write)) }
        #expect(throws: DescriptorError.notFound("fdset-id:7")) { try registry.remove(fdset: 7, descriptor: nil) }
        try registry.remove(fdset: 5, descriptor: Int64(b.write))       // the last one: the set is gone
        #expect(registry.fdsets.map(\.id) == [6])
        #expect(throws: DescriptorError.notFound("fdset-id:5, fd:\(b.write)")) { try registry.remove(fdset: 5, descriptor: Int64(b.write)) }
        try registry.remove(fdset: 6, descriptor: nil)
        #expect(b.isClosed && c.isClosed && registry.fdsets.isEmpty)
        #expect(DescriptorError.notFound("fdset-id:7").description == "File descriptor named 'fdset-id:7' not found")
    }

    @Test("/dev/fdset/N picks by access mode and O_DIRECT and returns a close-on-exec duplicate")
    func duplicateByFlags() throws {
        let path = "/tmp/ferry-fdset-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(path) }
        let readOnly = open(path, O_RDONLY | O_CREAT, 0o600)
        let writeOnly = open(path, O_WRONLY)
        let direct = open(path, O_RDWR | O_DIRECT)
        try #require(readOnly >= 0 && writeOnly >= 0 && direct >= 0)
        let registry = DescriptorRegistry()
        _ = try registry.add(readOnly, toFdset: 1, opaque: nil)
        _ = try registry.add(writeOnly, toFdset: 1, opaque: nil)
        _ = try registry.add(direct, toFdset: 1, opaque: nil)

        func accessMode(_ fd: Int32) -> Int32 { fcntl(fd, F_GETFL) & O_ACCMODE }
        let reading = try registry.duplicate(fdset: 1, writable: false, direct: false)
        let writing = try registry.duplicate(fdset: 1, writable: true, direct: false)
        let directWriting = try registry.duplicate(fdset: 1, writable: true, direct: true)
        let directReading = try registry.duplicate(fdset: 1, writable: false, direct: true)     // O_RDWR reads too
        defer { [reading, writing, directWriting, directReading].forEach { _ = close($0) } }
        #expect(accessMode(reading) == O_RDONLY && accessMode(writing) == O_WRONLY)
        #expect(accessMode(directWriting) == O_RDWR && fcntl(directWriting, F_GETFL) & O_DIRECT != 0)
        #expect(accessMode(directReading) == O_RDWR)
        for copy in [reading, writing, directWriting] {
            #expect(fcntl(copy, F_GETFD) & FD_CLOEXEC != 0)
            #expect(![readOnly, writeOnly, direct].contains(copy))
        }
        // The set keeps its own descriptors.
        #expect(registry.fdsets.first?.members.count == 3)

        #expect(throws: ChannelError.system("Failed to find fdset /dev/fdset/9", errno: ENOENT)) {
            _ = try registry.duplicate(fdset: 9, writable: false, direct: false)
        }
        try registry.remove(fdset: 1, descriptor: Int64(direct))
        #expect(throws: ChannelError.system("No descriptor in /dev/fdset/1 is open for writing (O_WRONLY or O_RDWR) with O_DIRECT",
                                            errno: EACCES)) {
            _ = try registry.duplicate(fdset: 1, writable: true, direct: true)
        }
    }

    @Test("fdsetID parses /dev/fdset/N and nothing else")
    func fdsetPaths() {
        #expect(DescriptorRegistry.fdsetID(path: "/dev/fdset/0") == 0)
        #expect(DescriptorRegistry.fdsetID(path: "/dev/fdset/42") == 42)
        for bad in ["/dev/fdset/", "/dev/fdset/-1", "/dev/fdset/+1", "/dev/fdset/1x", "/dev/fdset/ 1", "/dev/fdsets/1",
                    "/tmp/x", "/dev/fdset/99999999999999999999", "dev/fdset/1"] {
            #expect(DescriptorRegistry.fdsetID(path: bad) == nil, "\(bad)")
        }
    }

    @Test("the registry closes everything it holds when it goes away")
    func closesOnDeinit() throws {
        let named = Probe(), member = Probe()
        do {
            let registry = DescriptorRegistry()
            try registry.addNamed("n", descriptor: named.write)
            _ = try registry.add(member.write, toFdset: nil, opaque: nil)
        }
        #expect(named.isClosed && member.isClosed)
    }

    @Test("fd:NAME: the transport takes the named descriptor (consumed), and an unknown name is QEMU's error")
    func fdNameURI() throws {
        #expect(try MigrationURI(parsing: "fd:mig") == .fdName("mig"))
        #expect(try MigrationURI(parsing: "fd:7") == .fd(7))
        #expect(throws: ChannelError.invalidURI("fd: URI needs a descriptor number, not '7x'")) { try MigrationURI(parsing: "fd:7x") }
        #expect(throws: ChannelError.self) { try MigrationURI(parsing: "fd:") }

        let registry = DescriptorRegistry()
        var ends: [Int32] = [-1, -1]
        try #require(pipe(&ends) == 0)
        try registry.addNamed("mig", descriptor: ends[1])
        let channel = try Transport.connect(.fdName("mig"), descriptors: registry)
        try channel.write([1, 2, 3])
        channel.close()
        var bytes = [UInt8](repeating: 0, count: 8)
        #expect(read(ends[0], &bytes, 8) == 3 && bytes.prefix(3) == [1, 2, 3])
        #expect(read(ends[0], &bytes, 8) == 0)      // the channel closed the only write end
        close(ends[0])
        #expect(!registry.hasNamed("mig"))
        #expect(throws: ChannelError.invalidURI("File descriptor named 'mig' has not been found")) {
            _ = try Transport.listen(.fdName("mig"), descriptors: registry)
        }
    }
}
