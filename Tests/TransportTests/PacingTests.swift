import Glibc
import Testing
@testable import Transport

/// `limitPacing`: the kernel's pace for what a TCP socket sends (SO_MAX_PACING_RATE).
@Suite struct PacingTests {
    static func pacing(of channel: DescriptorChannel) -> UInt64 {
        var value: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        #expect(getsockopt(channel.descriptor, SOL_SOCKET, 47 /* SO_MAX_PACING_RATE */, &value, &length) == 0)
        return value
    }

    @Test func aTCPChannelIsPacedAtTheRateAndUnpacedAgainWithNil() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        #expect(Self.pacing(of: sender) == UInt64.max)
        sender.limitPacing(110_000_000)
        #expect(Self.pacing(of: sender) == 110_000_000)
        sender.limitPacing(nil)
        #expect(Self.pacing(of: sender) == UInt64.max)
    }

    @Test func aTCPChannelThatKeptThePathBusyHasADeliveryRate() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        #expect(sender.deliveryRate() == nil)       // nothing sent yet
        let bytes = 64 << 20
        let reader = ReaderThread(receiver, count: bytes)
        let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
        // Sampled while the socket still has data in flight (a sample taken once the
        // sender is idle is application-limited, and says nothing).
        var rate: UInt64?
        for _ in 0..<64 {
            try sender.write(chunk)
            if let sample = sender.deliveryRate() { rate = max(rate ?? 0, sample) }
        }
        #expect(try reader.wait().count == bytes)
        // Loopback delivers far faster than any link: at least 10 MB/s whatever the host's load.
        #expect(rate != nil)
        if let rate { #expect(rate > 10_000_000) }
        let (a, b) = try Kit.socketPair()
        defer { a.close(); b.close() }
        #expect(a.deliveryRate() == nil)            // not TCP
    }

    @Test func aTCPChannelCountsWhatReachedThePeer() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        let before = try #require(sender.deliveredBytes())
        #expect(before < 128 << 10, "nothing but the handshake")
        let bytes = 4 << 20
        let reader = ReaderThread(receiver, count: bytes)
        try sender.write([UInt8](repeating: 0x5A, count: bytes))
        #expect(try reader.wait().count == bytes)
        // Read by the peer, so counted delivered soon after (the last ACK may still be on its way).
        // Segments times the MSS: a short segment counts whole (on loopback, whose MSS is
        // 64 KiB, many are short, more so on a loaded host: 1.63x on one CI run; on a link
        // whose segments are full, within a segment). Counted twice would be 2x or more.
        let deadline = ContinuousClock.now + .seconds(5)
        while (sender.deliveredBytes() ?? 0) - before < UInt64(bytes), ContinuousClock.now < deadline { usleep(1000) }
        let delivered = Double((sender.deliveredBytes() ?? 0) - before)
        #expect(delivered >= Double(bytes) && delivered < Double(bytes) * 2, "\(delivered)")
        let (a, b) = try Kit.socketPair()
        defer { a.close(); b.close() }
        #expect(a.deliveredBytes() == nil)       // not TCP
        sender.close()
        #expect(sender.deliveredBytes() == nil)  // closed
    }

    @Test func aTCPChannelCountsWhatThePeerHasNotAcknowledged() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        #expect(sender.queuedBytes() == 0)
        // More than the peer's window takes while it reads nothing: the rest waits, unacknowledged.
        let bytes = 16 << 20
        let writer = WorkerThread { try sender.write([UInt8](repeating: 0x5A, count: bytes)) }
        let deadline = ContinuousClock.now + .seconds(10)
        var most: UInt64 = 0
        while most < 64 << 10, ContinuousClock.now < deadline {
            most = max(most, sender.queuedBytes() ?? 0)
            usleep(1000)
        }
        #expect(most >= 64 << 10, "\(most)")
        #expect(most <= UInt64(bytes))
        let reader = ReaderThread(receiver, count: bytes)
        #expect(try reader.wait().count == bytes)
        #expect(writer.wait() == nil)
        // Read and acknowledged: nothing left (the last ACK may still be on its way).
        while sender.queuedBytes() != 0, ContinuousClock.now < deadline + .seconds(5) { usleep(1000) }
        #expect(sender.queuedBytes() == 0)
        sender.close()
        #expect(sender.queuedBytes() == nil)    // closed
    }

    @Test func aPacedChannelLeavesWhatItHoldsUnsentToItsPacingTimer() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        sender.limitPacing(20_000)          // 20 KB/s: after the first segments, the next one waits seconds
        try sender.write([UInt8](repeating: 0x5A, count: 256 << 10))
        // Once what went out is acknowledged, nothing is in flight and bytes are unsent: what a
        // paced socket looks like between its sends.  No push, no wait (unpaced, that is a
        // segment a local queue dropped, pushed until the limit).
        usleep(200_000)
        let queued = try #require(sender.queuedBytes())
        #expect(queued > 0)
        let start = ContinuousClock.now
        #expect(sender.pushUnsent(within: .seconds(2)))
        #expect(ContinuousClock.now - start < .milliseconds(500))
    }

    @Test func aTCPChannelSaysHowLongThePathQueuesWhatItSends() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        let bytes = 4 << 20
        let reader = ReaderThread(receiver, count: bytes)
        try sender.write([UInt8](repeating: 0x5A, count: bytes))
        #expect(try reader.wait().count == bytes)
        // Loopback queues little; a loaded host's scheduling shows up, but never a second.
        let delay = try #require(sender.queueDelay())
        #expect(delay >= .zero && delay < .seconds(1), "\(delay)")
        let (a, b) = try Kit.socketPair()
        defer { a.close(); b.close() }
        #expect(a.queueDelay() == nil)       // not TCP
        sender.close()
        #expect(sender.queueDelay() == nil)  // closed
    }

    /// `shortenRetransmitWait`: TCP's least retransmission timeout (`TCP_RTO_MIN_US`, Linux 6.15).
    @Test func aTCPChannelResendsSoonerThanTheDefault() throws {
        let (sender, receiver) = try Kit.tcpPair()
        defer { sender.close(); receiver.close() }
        /// The socket's `TCP_RTO_MIN_US` in microseconds; nil with `errno` set when the kernel has none.
        func retransmitWait() -> Int32? {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(sender.descriptor, Int32(IPPROTO_TCP), 45 /* TCP_RTO_MIN_US */, &value, &length) == 0 ? value : nil
        }
        guard let before = retransmitWait() else {
            #expect(errno == ENOPROTOOPT, "a kernel before 6.15 has no such option")
            return
        }
        #expect(before > 60_000, "the default (200 ms, or the host's net.ipv4.tcp_rto_min_us)")
        sender.shortenRetransmitWait(to: .milliseconds(50))
        // The kernel rounds up to its tick (4 ms at 250 Hz).
        let after = try #require(retransmitWait())
        #expect(after >= 50_000 && after < 60_000, "\(after)")
    }

    @Test func aClosedChannelIsLeftAlone() throws {
        let (sender, receiver) = try Kit.tcpPair()
        sender.close()
        receiver.close()
        sender.limitPacing(1_000_000)       // no descriptor to set: nothing happens, nothing throws
        sender.shortenRetransmitWait(to: .milliseconds(50))
    }
}
