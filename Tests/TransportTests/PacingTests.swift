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

    @Test func aClosedChannelIsLeftAlone() throws {
        let (sender, receiver) = try Kit.tcpPair()
        sender.close()
        receiver.close()
        sender.limitPacing(1_000_000)       // no descriptor to set: nothing happens, nothing throws
    }
}
