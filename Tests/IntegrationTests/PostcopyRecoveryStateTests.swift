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

/// The source's side of a recovery: the destination's received bitmaps become
/// what is sent again, checked against the discard set sent at the switch.
@Suite struct PostcopyResumeSourceTests {
    typealias Kit = SwitchoverRetryTests

    /// A source's RAM (4 MiB, 1024 pages) switched to postcopy with pages 10-19 and 600 discarded.
    static func switched() throws -> RAMMigration {
        let ram = RAMMigration(blocks: [try Kit.block(filled: false)], tracker: Kit.OneShotDirtyLog(pages: 1024))
        ram.send.withLock { $0.selector.replace(with: [PostcopyPageMapTests.bitmap(1024, set: Array(10..<20) + [600])]) }
        _ = ram.postcopyDiscard()
        return ram
    }

    /// The received bitmap's words for a 1024-page block that lacks `pages`.
    static func received(lacking pages: [Int]) -> [UInt64] {
        var words = [UInt64](repeating: .max, count: 16)
        for page in pages { words[page / 64] &= ~(1 << UInt64(page % 64)) }
        return words
    }

    @Test("the pages the destination lacks become the dirty set, and nothing else")
    func lackingPagesAreResent() throws {
        let ram = try Self.switched()
        _ = ram.send.withLock { $0.selector.next(1000) }       // all sent before the break
        try ram.resumePostcopy(received: [Self.received(lacking: [12, 13, 600])])
        let job = ram.send.withLock { $0.selector.next(100) }
        #expect(job?.offsets == [12, 13, 600].map { $0 * 4096 })
        #expect(ram.stats.remainingPages == 3)
    }

    @Test("a received bitmap of the wrong size, or one that lacks a page sent before the switch, is refused")
    func hostileReceivedBitmaps() throws {
        let ram = try Self.switched()
        #expect(throws: MigrationError.stream(.malformed("the received bitmap of RAM block 'pc.ram' has 15 words; the block needs 16"))) {
            try ram.resumePostcopy(received: [[UInt64](repeating: .max, count: 15)])
        }
        #expect(throws: MigrationError.stream(.malformed("the destination says it lacks page 70 of RAM block 'pc.ram', which it had before the switch to postcopy"))) {
            try ram.resumePostcopy(received: [Self.received(lacking: [12, 70])])
        }
        var words = Self.received(lacking: [])
        words[15] = 0
        #expect(throws: MigrationError.stream(.malformed("the destination says it lacks page 960 of RAM block 'pc.ram', which it had before the switch to postcopy"))) {
            try ram.resumePostcopy(received: [words])
        }
        // Refused, the dirty set is as it was.
        #expect(ram.send.withLock { $0.selector.dirtyCount } == 11)
    }
}
