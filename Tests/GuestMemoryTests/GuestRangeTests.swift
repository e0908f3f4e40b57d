import Testing
@testable import GuestMemory

@Suite struct GuestRangeTests {
    @Test func rangesThatWrapAreRejected() {
        #expect(GuestRange(start: GuestAddress(UInt64.max - 10), byteCount: 100) == nil)
        #expect(GuestRange(start: GuestAddress(0), byteCount: 100) != nil)
    }

    @Test func containsChecksTheWholeAccess() {
        let range = GuestRange(start: GuestAddress(0x1000), byteCount: 0x1000)!
        #expect(range.contains(GuestAddress(0x1000), length: 0x1000))
        #expect(!range.contains(GuestAddress(0x1001), length: 0x1000))
        #expect(!range.contains(GuestAddress(0xfff), length: 1))
        #expect(!range.contains(GuestAddress(0x1000), length: UInt64.max))
    }

    @Test func pcLayoutSplitsAroundTheHole() throws {
        let map = try GuestMemoryMap.pc(byteCount: 4 << 30, backend: .anon)
        #expect(map.ramRanges.map(\.start.rawValue) == [0, 4 << 30])
        #expect(map.ramRanges.map(\.byteCount) == [3 << 30, 1 << 30])
        // An access in the hole or straddling a placement is refused.
        #expect(throws: GuestMemoryError.outOfRange(GuestAddress(3 << 30), length: 8)) {
            _ = try map.read(at: GuestAddress(3 << 30), count: 8)
        }
        try map.write([1, 2, 3, 4], at: GuestAddress((4 << 30) + 8))
        #expect(try map.readUInt32(at: GuestAddress((4 << 30) + 8)) == 0x0403_0201)
    }

    @Test func sizesMustBeWholePages() {
        #expect(throws: GuestMemoryError.invalidSize(4097, pageSize: .base)) {
            _ = try HostMapping(byteCount: 4097, backend: .anon)
        }
        #expect(throws: GuestMemoryError.invalidSize(0, pageSize: .base)) {
            _ = try HostMapping(byteCount: 0, backend: .anon)
        }
    }
}
