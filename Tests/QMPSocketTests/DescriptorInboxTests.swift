import Glibc
import HostIO
import Testing

/// A received descriptor on the write end of a pipe; `closed` tells from the
/// read end whether it was closed.
private struct Passed {
    let pipe = Pipe()
    let descriptor: ReceivedDescriptor

    init() { descriptor = ReceivedDescriptor(adopting: pipe.write) }

    var closed: Bool { pipe.writersGone(within: 0) }
}

@Suite("a connection's descriptor inbox: QEMU's rules, placed in the byte stream")
struct DescriptorInboxTests {
    @Test("a command takes the first of the last message meant for it; the rest and older messages are closed")
    func takeFirst() throws {
        let inbox = DescriptorInbox()
        let a = Passed(), b = Passed(), c = Passed()
        inbox.deliver([a.descriptor], forTextsEndingFrom: 1)
        inbox.deliver([b.descriptor, c.descriptor], forTextsEndingFrom: 2)
        #expect(inbox.count == 3)
        let taken = try #require(inbox.takeFirst(forTextEndingAt: 20))
        #expect(taken === b.descriptor)
        #expect(a.closed && c.closed && !b.closed)
        #expect(inbox.takeFirst(forTextEndingAt: 30) == nil)
        taken.close()
        #expect(b.closed)
    }

    @Test("texts that end before a message's offset do not see it: back-to-back commands each get their own")
    func placedInTheStream() throws {
        let inbox = DescriptorInbox()
        let a = Passed(), b = Passed()
        inbox.deliver([a.descriptor], forTextsEndingFrom: 1)        // " " + fd, alone in a read
        inbox.deliver([b.descriptor], forTextsEndingFrom: 40)       // `{getfd a} ` + fd: one read
        #expect(inbox.takeFirst(forTextEndingAt: 39) === a.descriptor)
        #expect(inbox.takeFirst(forTextEndingAt: 79) === b.descriptor)
        #expect(inbox.count == 0)
    }

    @Test("once a read is decoded only its message stays; closing closes what is left and what comes later")
    func replaceAndClose() {
        let inbox = DescriptorInbox()
        let a = Passed(), b = Passed(), late = Passed()
        inbox.deliver([a.descriptor], forTextsEndingFrom: 1)
        inbox.keepLatest()
        inbox.deliver([b.descriptor], forTextsEndingFrom: 2)
        #expect(!a.closed)          // may still serve a text of the read that brought b
        inbox.keepLatest()
        #expect(a.closed && !b.closed && inbox.count == 1)
        inbox.close()
        #expect(b.closed && inbox.count == 0)
        inbox.deliver([late.descriptor], forTextsEndingFrom: 4)
        #expect(late.closed)
    }
}
