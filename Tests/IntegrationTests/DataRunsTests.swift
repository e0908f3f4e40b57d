import Testing
import MigrationProtocol
@testable import Migration

/// How a receiver groups a frame's data pages: runs adjacent in one block, in
/// the tail's order, each page's checksum kept in that order.
@Suite struct DataRunsTests {
    static let page = 4096

    func data(_ block: Int, _ page: Int, _ sum: UInt64) -> PageRecord {
        PageRecord(block: block, offset: UInt64(page * Self.page), kind: .data, checksum: sum)
    }

    func zero(_ block: Int, _ page: Int) -> PageRecord {
        PageRecord(block: block, offset: UInt64(page * Self.page), kind: .zero)
    }

    @Test func adjacentPagesOfOneBlockMakeOneRun() {
        let runs = DataRuns((0..<256).map { data(0, 10 + $0, UInt64($0)) }, pageSize: Self.page)
        #expect(runs.runs == [.init(block: 0, offset: 10 * Self.page, pages: 256)])
        #expect(runs.checksums == (0..<256).map { UInt64($0) })
    }

    @Test func aGapAnotherBlockOrAStepBackStartsANewRunAndZeroPagesAreLeftOut() {
        let records = [data(0, 1, 11), data(0, 2, 12), zero(0, 3), data(0, 4, 14), data(1, 5, 15), data(1, 6, 16),
                       data(1, 2, 12), data(0, 7, 17)]
        let runs = DataRuns(records, pageSize: Self.page)
        #expect(runs.runs == [.init(block: 0, offset: 1 * Self.page, pages: 2), .init(block: 0, offset: 4 * Self.page, pages: 1),
                              .init(block: 1, offset: 5 * Self.page, pages: 2), .init(block: 1, offset: 2 * Self.page, pages: 1),
                              .init(block: 0, offset: 7 * Self.page, pages: 1)])
        #expect(runs.checksums == [11, 12, 14, 15, 16, 12, 17])
    }

    @Test func aFrameOfZeroPagesHasNoRun() {
        let runs = DataRuns([zero(0, 0), zero(0, 1)], pageSize: Self.page)
        #expect(runs.runs.isEmpty && runs.checksums.isEmpty)
    }
}
