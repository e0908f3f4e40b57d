import Testing
@testable import GuestMemory

@Suite struct DirtyBitmapTests {
    /// A seeded generator, so a failure repeats.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    @Test("set pages, runs, count and insert agree with a page-at-a-time oracle", arguments: [1, 63, 64, 65, 1000, 4096 + 7])
    func matchesOracle(pageCount: Int) {
        var rng = SplitMix(state: UInt64(pageCount))
        for _ in 0..<20 {
            var bitmap = DirtyBitmap(pageCount: pageCount)
            var oracle = Set<Int>()
            for _ in 0..<Int.random(in: 0...pageCount, using: &rng) {
                let page = Int.random(in: 0..<pageCount, using: &rng)
                bitmap[page] = true
                oracle.insert(page)
            }
            #expect(bitmap.setPages == oracle.sorted())
            #expect(bitmap.count == oracle.count)
            #expect(bitmap.runs.flatMap { Array($0.first..<$0.first + $0.count) } == oracle.sorted())
            #expect(zip(bitmap.runs, bitmap.runs.dropFirst()).allSatisfy { $0.first + $0.count < $1.first }, "runs are maximal")
            #expect(bitmap.complement.setPages == (0..<pageCount).filter { !oracle.contains($0) }, "the complement: no page past the end")
            var other = DirtyBitmap(pageCount: pageCount)
            let removed = Set((0..<pageCount).filter { _ in Bool.random(using: &rng) })
            for page in removed { other[page] = true }
            var rest = bitmap
            rest.subtract(other)
            #expect(rest.setPages == oracle.subtracting(removed).sorted())
            // Units of 128 pages: every page of a set unit, none past the end.
            let units = DirtyBitmap(words: [UInt64.random(in: 0...UInt64.max, using: &rng)], pageCount: (pageCount + 127) / 128)
            let expanded = DirtyBitmap(expanding: units, unitPages: 128, pageCount: pageCount)
            #expect(expanded.setPages == (0..<pageCount).filter { units[$0 / 128] })
            let offset = Int.random(in: 0...pageCount, using: &rng)
            var big = DirtyBitmap(pageCount: pageCount * 2 + 64)
            big.insert(bitmap, atPage: offset)
            #expect(big.setPages == oracle.sorted().map { $0 + offset })
        }
    }

    @Test func kvmWordsPastTheEndAreDropped() {
        let bitmap = DirtyBitmap(words: [~0, ~0], pageCount: 70)
        #expect(bitmap.count == 70)
        #expect(DirtyBitmap(pageCount: 70, allSet: true) == bitmap)
        var other = DirtyBitmap(pageCount: 70)
        other[69] = true
        other.formUnion(DirtyBitmap(pageCount: 70))
        #expect(other.setPages == [69])
    }
}
