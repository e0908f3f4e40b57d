import GuestMemory
import Migration
import Synchronization
import Userfaultfd

/// A background snapshot's write protection over this machine's RAM blocks,
/// with one userfaultfd: every block registered for write-protect faults and
/// protected whole; a release lifts one range and wakes the writers held there.
///
/// Anonymous memory needs `WP_UNPOPULATED` (Linux 6.4) so that pages never
/// touched are protected too; memfd and hugetlbfs need `WP_HUGETLBFS_SHMEM`.
final class UserfaultWriteProtection: WriteProtection {
    let blocks: [RAMBlock]
    let descriptor: Userfaultfd
    let unitBytes: [Int]
    /// Which blocks are registered now.
    let registered: Mutex<[Bool]>

    /// Opens the userfaultfd; fails as QEMU words it when the kernel cannot protect these backends.
    init(blocks: [RAMBlock]) throws(MigrationError) {
        self.blocks = blocks
        unitBytes = blocks.map { $0.pageSize.byteCount }
        registered = Mutex(Array(repeating: false, count: blocks.count))
        var features: UserfaultfdFeatures = .pageFaultFlagWP
        if blocks.contains(where: { $0.mapping.backend == .anon }) { features.insert(.wpUnpopulated) }
        if blocks.contains(where: { $0.mapping.backend != .anon }) { features.insert(.wpHugetlbfsShmem) }
        do { descriptor = try Userfaultfd(features: features) } catch {
            throw .state("Background-snapshot is not supported by host kernel: \(error)")
        }
    }

    static func supported(backend: MemoryBackend) -> Bool {
        guard let available = try? Userfaultfd.availableFeatures() else { return false }
        let needed: UserfaultfdFeatures = backend == .anon ? [.pageFaultFlagWP, .wpUnpopulated] : [.pageFaultFlagWP, .wpHugetlbfsShmem]
        return available.isSuperset(of: needed)
    }

    private func range(_ block: Int) -> (UInt64, UInt64) {
        (blocks[block].mapping.hostAddress(at: 0), blocks[block].byteCount)
    }

    func protectAll() throws(MigrationError) {
        for index in blocks.indices {
            let (start, length) = range(index)
            do {
                try descriptor.register(address: start, length: length, modes: .writeProtect)
                registered.withLock { $0[index] = true }
                try descriptor.writeProtect(address: start, length: length, protect: true)
            } catch { throw .state("cannot write-protect RAM block '\(blocks[index].name)': \(error)") }
        }
    }

    func waitForFaults(timeout: Duration) throws(MigrationError) -> [WriteFault] {
        let events: [UserfaultEvent]
        do { events = try descriptor.waitForEvents(timeout: timeout) } catch { throw .state("write faults: \(error)") }
        return try events.map { event throws(MigrationError) in
            guard let fault = locate(event.address) else {
                throw .state("a write fault at host address 0x\(String(event.address, radix: 16)) outside guest RAM")
            }
            return fault
        }
    }

    private func locate(_ address: UInt64) -> WriteFault? {
        for index in blocks.indices {
            let (start, length) = range(index)
            if address >= start && address - start < length { return WriteFault(block: index, offset: Int(address - start)) }
        }
        return nil
    }

    func release(block: Int, offset: Int, length: Int) throws(MigrationError) {
        let (start, _) = range(block)
        do { try descriptor.writeProtect(address: start + UInt64(offset), length: UInt64(length), protect: false) } catch {
            throw .state("cannot release \(length) bytes at \(offset) of RAM block '\(blocks[block].name)': \(error)")
        }
    }

    func interrupt() { descriptor.interrupt() }

    func releaseAll() throws(MigrationError) {
        var first: MigrationError?
        for index in blocks.indices where registered.withLock({ $0[index] }) {
            let (start, length) = range(index)
            do {
                try descriptor.writeProtect(address: start, length: length, protect: false)
                try descriptor.unregister(address: start, length: length)
                registered.withLock { $0[index] = false }
            } catch {
                if first == nil { first = .state("cannot lift write protection of RAM block '\(blocks[index].name)': \(error)") }
            }
        }
        if let first { throw first }
    }
}
