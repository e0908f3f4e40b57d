import Testing
import GuestMemory
@testable import Migration

/// Postcopy's pure parts: the source's picks for page requests and its huge-page
/// widening, and the destination's account of the pages still to come.
@Suite struct PostcopyPageMapTests {
    static func bitmap(_ count: Int, set pages: [Int]) -> DirtyBitmap {
        var bitmap = DirtyBitmap(pageCount: count)
        for page in pages { bitmap[page] = true }
        return bitmap
    }

    @Test("a request takes the dirty pages of its range, once, in order; the cursor stays")
    func requestTakesItsRange() {
        var selector = PageSelector(pageCounts: [64], chunkPages: 512)
        _ = selector.merge([Self.bitmap(64, set: [1, 5, 6, 7, 40])])
        let job = selector.take(block: 0, pages: 4..<8)
        #expect(job.offsets == [5, 6, 7].map { $0 * 4096 } && job.blocks == [0, 0, 0])
        #expect(selector.dirtyCount == 2)
        #expect(selector.take(block: 0, pages: 4..<8).count == 0, "sent already: nothing again")
        #expect(selector.next(10)?.offsets == [4096, 40 * 4096], "the background pass goes on from its cursor")
    }

    @Test("widening marks every page of a huge page with one dirty page, and counts exactly")
    func wideningToHugePages() {
        var selector = PageSelector(pageCounts: [2048, 64], chunkPages: 512)
        _ = selector.merge([Self.bitmap(2048, set: [3, 1030]), Self.bitmap(64, set: [9])])
        selector.widen(unitPages: [512, 1])
        #expect(selector.bitmaps[0].setPages == Array(0..<512) + Array(1024..<1536))
        #expect(selector.bitmaps[1].setPages == [9], "a 4 KiB block is left as it is")
        #expect(selector.dirtyCount == 1024 + 1)
    }

    @Test("a fault asks once per unit; a unit with nothing to come is zero; placing completes a request with its latency")
    func faultsAndPlacements() {
        let start = ContinuousClock.now
        var map = PostcopyPageMap(discard: [Self.bitmap(16, set: [2, 3])], unitPages: [1])
        #expect(map.fault(block: 0, offset: 2 * 4096, at: start) == .request(offset: 2 * 4096, length: 4096))
        #expect(map.fault(block: 0, offset: 2 * 4096 + 100, at: start) == .waiting, "asked already")
        #expect(map.fault(block: 0, offset: 9 * 4096, at: start) == .absent(offset: 9 * 4096, length: 4096))
        #expect(map.placed(block: 0, pages: 3..<4, at: start + .milliseconds(1)) == nil, "never asked for")
        #expect(map.placed(block: 0, pages: 2..<3, at: start + .milliseconds(5)) == .milliseconds(5))
        #expect(map.isComplete && map.firstNeeded == nil)
        #expect(map.fault(block: 0, offset: 2 * 4096, at: start) == .absent(offset: 2 * 4096, length: 4096),
                "placed since the fault: the caller finds it there and wakes")
    }

    @Test("on huge pages a fault asks for the whole unit, which completes only with its last page")
    func hugeUnits() {
        let start = ContinuousClock.now
        var map = PostcopyPageMap(discard: [Self.bitmap(1024, set: Array(512..<1024))], unitPages: [512])
        #expect(map.fault(block: 0, offset: 600 * 4096, at: start) == .request(offset: 512 * 4096, length: 512 * 4096))
        #expect(map.placed(block: 0, pages: 512..<1023, at: start) == nil)
        #expect(map.isNeeded(block: 0, page: 1023) && map.neededCount == 1)
        #expect(map.fault(block: 0, offset: 1023 * 4096, at: start) == .waiting)
        #expect(map.placed(block: 0, pages: 1023..<1024, at: start + .milliseconds(2)) == .milliseconds(2))
        #expect(map.fault(block: 0, offset: 0, at: start) == .absent(offset: 0, length: 512 * 4096))
    }
}
