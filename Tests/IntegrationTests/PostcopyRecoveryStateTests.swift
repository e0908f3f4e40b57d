import Foundation
import Synchronization
import Testing
import GuestMemory
@testable import Migration

/// The pure parts of postcopy recovery and blocktime: what the destination
/// says it has, what it asks again, what the source resends, and how long
/// vCPUs waited.
@Suite struct PostcopyRecoveryStateTests {
    typealias Maps = PostcopyPageMapTests

    @Test("the received bitmap is every page but those still to come, with no bit past the block")
    func receivedIsTheComplement() {
        var map = PostcopyPageMap(discard: [Maps.bitmap(70, set: [1, 2, 65]), Maps.bitmap(64, set: [])], unitPages: [1, 1])
        _ = map.placed(block: 0, pages: 2..<3, at: .now)
        let tail: UInt64 = 0b11_1101      // pages 64-69, all here but 65
        let expected: [[UInt64]] = [[~UInt64(0b10), tail], [UInt64.max]]
        #expect(map.receivedWords == expected)
    }

    @Test("the requests still outstanding are asked again, oldest first; a placed one is not")
    func outstandingRequests() {
        let start = ContinuousClock.now
        var map = PostcopyPageMap(discard: [Maps.bitmap(2048, set: Array(0..<1024))], unitPages: [512])
        #expect(map.fault(block: 0, offset: 600 * 4096, at: start + .milliseconds(2)) == .request(offset: 512 * 4096, length: 2 << 20))
        #expect(map.fault(block: 0, offset: 5 * 4096, at: start + .milliseconds(3)) == .request(offset: 0, length: 2 << 20))
        #expect(map.outstandingRequests.map(\.offset) == [512 * 4096, 0])
        _ = map.placed(block: 0, pages: 512..<1024, at: start + .milliseconds(4))
        #expect(map.outstandingRequests.map(\.offset) == [0])
        #expect(map.outstandingRequests.first?.length == 2 << 20)
    }

    @Test("a selector replaced by what the destination lacks counts exactly and starts its pass again")
    func selectorReplaced() {
        var selector = PageSelector(pageCounts: [64, 64], chunkPages: 512)
        _ = selector.merge([Maps.bitmap(64, set: [1, 2, 3]), Maps.bitmap(64, set: [9])])
        _ = selector.next(2)
        selector.replace(with: [Maps.bitmap(64, set: [1, 40]), Maps.bitmap(64, set: [])])
        #expect(selector.dirtyCount == 2)
        #expect(selector.next(10)?.offsets == [4096, 40 * 4096])
    }

    @Test("blocktime: each vCPU's wait, the time all were blocked at once, latencies in QEMU's buckets and units")
    func blocktime() {
        let t = ContinuousClock.now
        var clock = PostcopyBlocktime(vcpuCount: 2)
        clock.fault(block: 0, unit: 7, vcpu: 0, at: t)
        clock.fault(block: 0, unit: 9, vcpu: 1, at: t + .milliseconds(1))       // both blocked from here
        clock.fault(block: 0, unit: 7, vcpu: nil, at: t + .milliseconds(2))     // another thread
        clock.placed(block: 0, unit: 7, at: t + .milliseconds(3))               // vCPU 0 free: 2 ms all blocked
        clock.placed(block: 0, unit: 9, at: t + .milliseconds(4))
        clock.placed(block: 0, unit: 11, at: t + .milliseconds(5))              // nobody waited on it
        let report = clock.report
        #expect(report.blocktime == 2)
        #expect(report.vcpuBlocktime == [3, 3])
        #expect(report.vcpuLatency == [3_000_000, 3_000_000])
        #expect(report.nonVCPULatency == 1_000_000)
        #expect(report.latency == 7_000_000 / 3)
        var buckets = [UInt64](repeating: 0, count: 24)
        buckets[11] = 2      // 3000 µs: [2048, 4096)
        buckets[9] = 1       // 1000 µs: [512, 1024)
        #expect(report.latencyDistribution == buckets)
        #expect(PostcopyBlocktime.bucket(.seconds(3600)) == 23, "the last bucket holds everything above")
        #expect(PostcopyBlocktime.bucket(.nanoseconds(10)) == 0)
    }

    @Test("blocktime: a vCPU waiting on two units is blocked until the last arrives; a second wait on one unit ends with it")
    func blocktimeTwoUnits() {
        let t = ContinuousClock.now
        var clock = PostcopyBlocktime(vcpuCount: 1)
        clock.fault(block: 0, unit: 1, vcpu: 0, at: t)
        clock.fault(block: 1, unit: 1, vcpu: 0, at: t + .milliseconds(1))
        clock.placed(block: 0, unit: 1, at: t + .milliseconds(2))
        #expect(clock.report.blocktime == 0, "still blocked on the other unit")
        clock.placed(block: 1, unit: 1, at: t + .milliseconds(5))
        #expect(clock.report.blocktime == 5)
        #expect(clock.report.vcpuBlocktime == [6], "2 ms + 4 ms of waits, QEMU's sum")
    }

    @Test("the page map gives blocktime the faults that wait for a page, and nothing for a unit with none to come")
    func mapFeedsBlocktime() {
        let t = ContinuousClock.now
        var map = PostcopyPageMap(discard: [Maps.bitmap(64, set: [3])], unitPages: [1], blocktimeVCPUs: 1)
        #expect(map.fault(block: 0, offset: 8 * 4096, vcpu: 0, at: t) == .absent(offset: 8 * 4096, length: 4096))
        #expect(map.fault(block: 0, offset: 3 * 4096, vcpu: 0, at: t) == .request(offset: 3 * 4096, length: 4096))
        _ = map.placed(block: 0, pages: 3..<4, at: t + .milliseconds(4))
        #expect(map.blocktime?.report.vcpuBlocktime == [4])
        #expect(map.blocktime?.report.blocktime == 4)
        #expect(map.blocktime?.report.latencyDistribution.reduce(0, +) == 1)
    }
}
