import EmbeddedGuest
import Testing
@testable import VMM

/// The guest's heartbeats as the VMM sums them: the numbers are the guest's.
@Suite struct GuestProgressTests {
    static func heartbeat(cpu: UInt32, pagesWritten: UInt64, verifyErrors: UInt64) -> HeartbeatRecord? {
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { (0..<T.bitWidth / 8).map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) } }
        let bytes = le(GuestABI.heartbeatMagic) + le(cpu) + le(UInt64(1)) + le(UInt64(0)) + le(pagesWritten)
            + le(verifyErrors) + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(0)) + [UInt8](repeating: 0, count: 8)
        return HeartbeatRecord(bytes: bytes)
    }

    @Test("absurd counts from two vCPUs saturate instead of trapping the VMM (--progress, --verify-on-exit)")
    func absurdCountsSaturate() throws {
        var progress = GuestProgress(cpuCount: 2)
        for cpu: UInt32 in [0, 1] {
            progress.record(try #require(Self.heartbeat(cpu: cpu, pagesWritten: .max, verifyErrors: .max - 1)), at: .now)
        }
        #expect(progress.pagesWritten == .max)
        #expect(progress.verifyErrors == .max)
        var honest = GuestProgress(cpuCount: 2)
        honest.record(try #require(Self.heartbeat(cpu: 0, pagesWritten: 5, verifyErrors: 0)), at: .now)
        honest.record(try #require(Self.heartbeat(cpu: 1, pagesWritten: 7, verifyErrors: 1)), at: .now)
        #expect(honest.pagesWritten == 12 && honest.verifyErrors == 1)
    }
}
