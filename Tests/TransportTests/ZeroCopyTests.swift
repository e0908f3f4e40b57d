import Glibc
import GuestMemory
@testable import Migration
import Testing
@testable import Transport

@Suite("zero-copy sends (MSG_ZEROCOPY)")
struct ZeroCopyTests {
    @Test("over TCP loopback: guest pages sent zero-copy between normal writes arrive exactly; flush reports the copy")
    func loopback() throws {
        let mapping = try Kit.filledMapping(pages: 2048)          // 8 MiB
        let (sender, receiver) = try Kit.tcpPair()
        try sender.enableZeroCopy()
        let header: [UInt8] = Array("ferry-zc".utf8), trailer: [UInt8] = [0xEE, 0xFF]
        // Three lists of 2 MiB, one of them in two ranges, then 64 single pages: many completion ids.
        var expected = header
        var lists: [GatherList] = []
        for (offset, count) in [(0, 2 << 20), (4 << 20, 2 << 20), (2 << 20, 1 << 20)] {
            var list = GatherList()
            list.append(mapping, offset: offset, count: count)
            if offset == 2 << 20 { list.append(mapping, offset: 7 << 20, count: 1 << 20) }
            lists.append(list)
        }
        for page in 0..<64 {
            var list = GatherList()
            list.append(mapping, offset: (6 << 20) + page * 4096, count: 4096)
            lists.append(list)
        }
        for list in lists { expected += list.flattened() }
        expected += trailer
        let received = ReaderThread(receiver, count: expected.count)

        try sender.write(header)
        for list in lists { try sender.writeZeroCopy(list) }
        try sender.write(trailer)
        let copied = try sender.flushZeroCopy()
        let queued = sender.zeroCopy.withLock { $0 }
        #expect(queued.queued >= lists.count, "one completion id per sendmsg that queued data")
        #expect(queued.completed == queued.queued)
        // Over loopback the receiving socket gets the pages, so the kernel copies them and says so.
        #expect(copied)
        #expect(try sender.flushZeroCopy() == false, "nothing was sent since the last flush")
        let bytes = try received.wait()
        #expect(Kit.firstDifference(bytes, expected) == nil, "the bytes differ from what was sent")
    }

    @Test("enableZeroCopy on a Unix socket fails with QEMU's message")
    func unixSocket() throws {
        let (one, _) = try Kit.socketPair()
        #expect(throws: ChannelError.zeroCopyUnavailable(errno: EOPNOTSUPP)) { try one.enableZeroCopy() }
        #expect(ChannelError.zeroCopyUnavailable(errno: EOPNOTSUPP).description
                == "Requested Zero Copy feature is not available: Operation not supported")
    }

    @Test("enableZeroCopy on a pipe fails: not a socket")
    func pipe() throws {
        var fds: [Int32] = [0, 0]
        #expect(Glibc.pipe(&fds) == 0)
        let reading = DescriptorChannel(adopting: fds[0], returnPath: false)
        let writing = DescriptorChannel(adopting: fds[1], returnPath: false)
        defer { reading.close(); writing.close() }
        #expect(throws: ChannelError.zeroCopyUnavailable(errno: ENOTSOCK)) { try writing.enableZeroCopy() }
    }

    @Test("a zero-copy write before enableZeroCopy is refused, not silently copied")
    func writeBeforeEnable() throws {
        let mapping = try Kit.filledMapping(pages: 1)
        var list = GatherList()
        list.append(mapping, offset: 0, count: 4096)
        let (sender, _) = try Kit.tcpPair()
        #expect(throws: ChannelError.system("zero-copy write to the migration channel before enableZeroCopy()", errno: EINVAL)) {
            try sender.writeZeroCopy(list)
        }
        #expect(try sender.flushZeroCopy() == false, "nothing to wait for")
    }

    @Test("the engine reaches zero-copy through its pending channel once it is open")
    func throughPendingChannel() throws {
        let (sender, _) = try Kit.tcpPair()
        let pending = PendingChannel(OpenChannel(sender))
        #expect(throws: PendingChannel.cancelled) { _ = try pending.zeroCopyChannel }
        try pending.open()
        let zeroCopy = try pending.zeroCopyChannel
        #expect(zeroCopy as AnyObject === sender)
        try zeroCopy.enableZeroCopy()
    }
}
