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

    @Test("a page in a chunk that held no memory is zero without being read, until a sync collects a page of that chunk")
    func residency() {
        var selector = PageSelector(pageCounts: [8], chunkPages: 4)
        _ = selector.merge([bitmap(8, [0, 5])])
        selector.resident = [bitmap(2, [1])]        // chunk 0 (pages 0-3) empty, chunk 1 resident
        var asked: [Int] = []
        let job = selector.next(8) { _, page in asked.append(page); return false }
        #expect(job?.knownZero == [true, false])
        #expect(asked == [5], "the empty chunk's page was not looked at")
        _ = selector.merge([bitmap(8, [0])])
        #expect(selector.resident == [bitmap(2, [0, 1])])
        #expect(selector.next(8)?.knownZero == [false], "the guest wrote to the chunk since: the page may hold data")
    }

    @Test("a sync in the middle of the first pass keeps the chunks nothing was written to known empty")
    func residencyAcrossASync() {
        var selector = PageSelector(pageCounts: [12, 8], chunkPages: 4)
        _ = selector.merge([bitmap(12, [0, 1, 9]), bitmap(8, [6])])
        selector.resident = [bitmap(3, []), bitmap(2, [])]      // nothing resident when tracking started
        #expect(selector.next(1)?.knownZero == [true])          // page 0
        _ = selector.merge([bitmap(12, [8]), nil])              // the guest wrote page 8 (chunk 2) meanwhile
        #expect(selector.resident == [bitmap(3, [2]), bitmap(2, [])])
        var asked: [Int] = []
        let rest = selector.next(8) { _, page in asked.append(page); return false }
        #expect(rest?.offsets.map { $0 / 4096 } == [1, 8, 9, 6])
        #expect(rest?.knownZero == [true, false, false, true], "chunk 0 and block 1 stay empty; chunk 2 is read")
        #expect(asked == [8, 9])
    }

    @Test("chunks are marked from the pages a sync collected, whatever the chunk size")
    func markingChunks() {
        for chunkPages in [1, 4, 64, 100, 512] {
            let pages = 2048
            let set = [0, 3, 63, 64, 99, 100, 511, 512, 1000, 2047]
            var chunks = DirtyBitmap(pageCount: (pages + chunkPages - 1) / chunkPages)
            PageSelector.markChunks(of: bitmap(pages, set), in: &chunks, chunkPages: chunkPages)
            let expected = Set(set.map { $0 / chunkPages })
            #expect((0..<chunks.pageCount).filter { chunks[$0] } == expected.sorted(), "chunkPages \(chunkPages)")
        }
    }
}
