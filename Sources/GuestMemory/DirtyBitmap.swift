/// One bit per page of a RAM block or memory slot, in KVM's layout (64 pages a
/// word, lowest page in the lowest bit), so merging with KVM's log is `|=`.
public struct DirtyBitmap: Equatable, Sendable {
    public private(set) var words: [UInt64]
    public let pageCount: Int

    public init(pageCount: Int, allSet: Bool = false) {
        precondition(pageCount >= 0)
        self.pageCount = pageCount
        words = [UInt64](repeating: allSet ? ~0 : 0, count: (pageCount + 63) / 64)
        maskTail()
    }

    /// Adopts `words` (KVM's bitmap); bits past `pageCount` are dropped.
    public init(words: [UInt64], pageCount: Int) {
        precondition(words.count == (pageCount + 63) / 64)
        self.words = words
        self.pageCount = pageCount
        maskTail()
    }

    private mutating func maskTail() {
        let tail = pageCount % 64
        if tail != 0 { words[words.count - 1] &= (1 << UInt64(tail)) - 1 }
    }

    public subscript(page: Int) -> Bool {
        get { words[page >> 6] & (1 << UInt64(page & 63)) != 0 }
        set {
            precondition(page >= 0 && page < pageCount, "page \(page) outside a bitmap of \(pageCount)")
            if newValue { words[page >> 6] |= 1 << UInt64(page & 63) } else { words[page >> 6] &= ~(1 << UInt64(page & 63)) }
        }
    }

    /// The number of set pages.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// The pages not set here, and only they.
    public var complement: DirtyBitmap { DirtyBitmap(words: words.map { ~$0 }, pageCount: pageCount) }

    /// Clears every page set in `other`.
    public mutating func subtract(_ other: DirtyBitmap) {
        precondition(other.pageCount == pageCount)
        for i in words.indices { words[i] &= ~other.words[i] }
    }

    /// A bitmap of `pageCount` pages with every page of each set unit of `units` set
    /// (unit `u` is pages `u × unitPages ..< (u + 1) × unitPages`, a multiple of 64 pages).
    public init(expanding units: DirtyBitmap, unitPages: Int, pageCount: Int) {
        precondition(unitPages > 0 && unitPages % 64 == 0)
        var words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        let wordsPerUnit = unitPages / 64
        var from = 0
        while let unit = units.nextSetPage(from: from), unit * wordsPerUnit < words.count {
            for w in unit * wordsPerUnit..<min((unit + 1) * wordsPerUnit, words.count) { words[w] = ~0 }
            from = unit + 1
        }
        self.init(words: words, pageCount: pageCount)
    }

    public mutating func formUnion(_ other: DirtyBitmap) {
        precondition(other.pageCount == pageCount)
        for i in words.indices { words[i] |= other.words[i] }
    }

    /// ORs `other` into this bitmap with its page 0 at `page` (a slot inside a block).
    public mutating func insert(_ other: DirtyBitmap, atPage page: Int) {
        precondition(page >= 0 && other.pageCount <= pageCount - page)
        if page % 64 == 0 {
            let base = page / 64
            for i in other.words.indices { words[base + i] |= other.words[i] }
        } else {
            for p in other.setPages { self[page + p] = true }
        }
    }

    /// Set pages, lowest first.
    public var setPages: [Int] {
        var pages: [Int] = []
        pages.reserveCapacity(count)
        for (i, word) in words.enumerated() where word != 0 {
            var w = word
            while w != 0 {
                pages.append(i * 64 + w.trailingZeroBitCount)
                w &= w - 1
            }
        }
        return pages
    }

    /// Runs of consecutive set pages as `(first, count)`, lowest first.
    public var runs: [(first: Int, count: Int)] {
        var result: [(first: Int, count: Int)] = []
        for page in setPages {
            if let last = result.last, last.first + last.count == page {
                result[result.count - 1].count += 1
            } else {
                result.append((page, 1))
            }
        }
        return result
    }
}

extension DirtyBitmap {
    /// The first set page at or after `page`, or `nil`.
    public func nextSetPage(from page: Int) -> Int? {
        guard page < pageCount else { return nil }
        var index = page >> 6
        var word = words[index] & (~0 << UInt64(page & 63))
        while word == 0 {
            index += 1
            guard index < words.count else { return nil }
            word = words[index]
        }
        return index * 64 + word.trailingZeroBitCount
    }

    /// ORs `other` in and returns how many pages were newly set.
    @discardableResult
    public mutating func merge(_ other: DirtyBitmap) -> Int {
        precondition(other.pageCount == pageCount)
        var added = 0
        for i in words.indices {
            added += (other.words[i] & ~words[i]).nonzeroBitCount
            words[i] |= other.words[i]
        }
        return added
    }
}
