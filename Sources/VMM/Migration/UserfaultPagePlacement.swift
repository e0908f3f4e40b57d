import GuestMemory
import Migration
import Synchronization
import Userfaultfd

/// A postcopy destination's page placement over this machine's RAM blocks,
/// with one userfaultfd: every block registered for missing-page faults, pages
/// placed with `UFFDIO_COPY` (whole huge pages on hugetlb), zero pages with
/// `UFFDIO_ZEROPAGE` (a copy of a zeroed huge page on hugetlb, which has no
/// zero-page ioctl).  Anonymous memory needs nothing beyond the basic API;
/// memfd needs `MISSING_SHMEM` and hugetlbfs `MISSING_HUGETLBFS`.
final class UserfaultPagePlacement: PagePlacement {
    let blocks: [RAMBlock]
    let descriptor: Userfaultfd
    let unitBytes: [Int]
    let leavesZeroUnits: Bool
    let registered: Mutex<[Bool]>
    /// A zeroed huge page, for zero units on hugetlb (made once, when first needed).
    let zeroHugePage = Mutex<[UInt8]?>(nil)

    /// `leavesZeroUnits`: false when RAM was preallocated (`PagePlacement.leavesZeroUnits`).
    init(blocks: [RAMBlock], leavesZeroUnits: Bool) throws(MigrationError) {
        self.blocks = blocks
        self.leavesZeroUnits = leavesZeroUnits
        unitBytes = blocks.map { $0.pageSize.byteCount }
        registered = Mutex(Array(repeating: false, count: blocks.count))
        // The faulting thread's TID too, where the kernel has it (postcopy blocktime tells vCPUs apart by it).
        var features = Self.features(blocks.map(\.mapping.backend))
        if (try? Userfaultfd.availableFeatures())?.contains(.threadID) == true { features.insert(.threadID) }
        do { descriptor = try Userfaultfd(features: features) } catch {
            throw .state("Postcopy is not supported: \(error)")
        }
    }

    static func features(_ backends: [MemoryBackend]) -> UserfaultfdFeatures {
        var features: UserfaultfdFeatures = []
        if backends.contains(.memfd) { features.insert(.missingShmem) }
        if backends.contains(.hugetlb) { features.insert(.missingHugetlbfs) }
        return features
    }

    /// Whether this kernel can place pages on `backend` this way.
    static func supported(backend: MemoryBackend) -> Bool {
        guard let available = try? Userfaultfd.availableFeatures() else { return false }
        return available.isSuperset(of: features([backend]))
    }

    private func address(_ block: Int, _ offset: Int) -> UInt64 { blocks[block].mapping.hostAddress(at: offset) }

    func prepare(discarding ranges: [[Range<Int>]]) throws(MigrationError) {
        for (index, block) in blocks.enumerated() {
            do {
                for range in ranges[index] { try block.mapping.discard(offset: range.lowerBound, count: range.count) }
            } catch { throw .state("cannot free the discarded pages of RAM block '\(block.name)': \(error)") }
            do {
                try descriptor.register(address: address(index, 0), length: block.byteCount, modes: .missing)
                registered.withLock { $0[index] = true }
            } catch { throw .state("cannot register RAM block '\(block.name)' for missing-page faults: \(error)") }
        }
    }

    func waitForFaults(timeout: Duration) throws(MigrationError) -> [MissingPageFault] {
        let events: [UserfaultEvent]
        do { events = try descriptor.waitForEvents(timeout: timeout) } catch { throw .state("missing-page faults: \(error)") }
        return try events.map { event throws(MigrationError) in
            for index in blocks.indices {
                let start = address(index, 0)
                if event.address >= start && event.address - start < blocks[index].byteCount {
                    let offset = Int(event.address - start)
                    return MissingPageFault(block: index, offset: offset / unitBytes[index] * unitBytes[index],
                                            thread: Int32(bitPattern: event.thread))
                }
            }
            throw .state("a missing-page fault at host address 0x\(String(event.address, radix: 16)) outside guest RAM")
        }
    }

    func place(_ bytes: [UInt8], range: Range<Int>, block: Int, offset: Int) throws(MigrationError) -> Bool {
        do { return try descriptor.copyAll(from: bytes, range: range, to: address(block, offset), unit: unitBytes[block]) } catch {
            throw .state("cannot place \(range.count) bytes at offset \(offset) of RAM block '\(blocks[block].name)': \(error)")
        }
    }

    func placeZero(block: Int, offset: Int, length: Int) throws(MigrationError) -> Bool {
        guard blocks[block].mapping.backend == .hugetlb else {
            do { return try descriptor.zeroPageAll(address: address(block, offset), length: UInt64(length), unit: UInt64(unitBytes[block])) } catch {
                throw .state("cannot place zero pages at offset \(offset) of RAM block '\(blocks[block].name)': \(error)")
            }
        }
        let unit = unitBytes[block]
        let zero = zeroHugePage.withLock { page in
            if page == nil { page = [UInt8](repeating: 0, count: unit) }
            return page!
        }
        var placedAll = true
        for at in stride(from: offset, to: offset + length, by: unit) {
            if !(try place(zero, range: 0..<unit, block: block, offset: at)) { placedAll = false }
        }
        return placedAll
    }

    func wake(block: Int, offset: Int, length: Int) throws(MigrationError) {
        do { try descriptor.wake(address: address(block, offset), length: UInt64(length)) } catch {
            throw .state("cannot wake the accesses at offset \(offset) of RAM block '\(blocks[block].name)': \(error)")
        }
    }

    func interrupt() { descriptor.interrupt() }

    func releaseAll() throws(MigrationError) {
        var first: MigrationError?
        for index in blocks.indices where registered.withLock({ $0[index] }) {
            do {
                try descriptor.unregister(address: address(index, 0), length: blocks[index].byteCount)
                registered.withLock { $0[index] = false }
            } catch {
                if first == nil { first = .state("cannot unregister RAM block '\(blocks[index].name)': \(error)") }
            }
        }
        if let first { throw first }
    }
}
