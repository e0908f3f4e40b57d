import Testing
import GuestMemory
@testable import Migration

/// The page selector on its own: no KVM, no I/O.
@Suite struct PageSelectorTests {
    func bitmap(_ pages: Int, _ set: [Int]) -> DirtyBitmap {
        var bitmap = DirtyBitmap(pageCount: pages)
        for page in set { bitmap[page] = true }
        return bitmap
    }

    @Test("pages come out in batches from the cursor, across blocks, each once between syncs; the count stays exact")
    func batchesAndCount() {
        var selector = PageSelector(pageCounts: [8, 4], chunkPages: 512)
        #expect(selector.merge([bitmap(8, [1, 3, 7]), bitmap(4, [0, 2])]) == 5)
        #expect(selector.dirtyCount == 5)
        let first = selector.next(2)
        #expect(first?.blocks == [0, 0] && first?.offsets == [4096, 3 * 4096])
        // A sync re-dirties a picked page and one still pending: only the picked one counts again.
        #expect(selector.merge([bitmap(8, [1, 7]), nil]) == 2)
        #expect(selector.dirtyCount == 4)
        let second = selector.next(10)
        #expect(second?.blocks == [0, 1, 1, 0] && second?.offsets == [7 * 4096, 0, 2 * 4096, 4096], "wraps to block 1, then round to block 0")
        #expect(selector.dirtyCount == 0 && selector.next(1) == nil)
    }

    @Test("a page in a chunk that held no memory is zero without being read, until the next sync")
    func residency() {
        var selector = PageSelector(pageCounts: [8], chunkPages: 4)
        _ = selector.merge([bitmap(8, [0, 5])])
        selector.resident = [bitmap(2, [1])]        // chunk 0 (pages 0-3) empty, chunk 1 resident
        var asked: [Int] = []
        let job = selector.next(8) { _, page in asked.append(page); return false }
        #expect(job?.knownZero == [true, false])
        #expect(asked == [5], "the empty chunk's page was not looked at")
        _ = selector.merge([bitmap(8, [0])])
        #expect(selector.resident == nil)
        #expect(selector.next(8)?.knownZero == [false], "after a sync the page may hold data")
    }
}
