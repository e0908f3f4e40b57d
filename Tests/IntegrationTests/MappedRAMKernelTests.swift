import Foundation
import Synchronization
import Testing
import EmbeddedGuest
import GuestMemory
import KVM
import Migration
import MigrationProtocol
import QMP
@testable import VMM

/// mapped-ram files with a real guest: stopped and live saves, with and
/// without multifd and direct-io, restored page for page with the guest
/// running on; a live save stays within the guest's size; an incremental save
/// writes only what changed and restores the latest state.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct MappedRAMKernelTests {
    let kit = MigrationKernelTests()
    static let memory: UInt64 = 256 << 20

    struct Case: Sendable, CustomTestStringConvertible {
        let live: Bool
        /// nil: without the multifd capability (one writer thread).
        let channels: Int?
        let direct: Bool
        let backend: MemoryBackend
        var testDescription: String {
            "\(live ? "live" : "stopped"), \(channels.map { "multifd \($0)" } ?? "no multifd"), \(direct ? "direct-io" : "buffered"), \(backend)"
        }
    }

    func machine(_ backend: MemoryBackend = .anon, workload: WorkloadSpec, incoming: Bool) throws -> (Machine, MigrationKernelTests.Capture) {
        let capture = MigrationKernelTests.Capture()
        var configuration = MachineConfiguration(memoryBytes: Self.memory, backend: backend, cpus: 2, boot: .embedded(workload))
        configuration.preallocate = false
        let machine = try Machine(configuration, incoming: incoming, serialOutput: { _ in }, events: { event in
            capture.events.withLock { $0.append(event.name) }
        })
        return (machine, capture)
    }

    static func path() -> String { "/var/tmp/ferry-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).mapped" }

    func configure(_ machine: Machine, channels: Int?, direct: Bool, incremental: Bool = false) {
        var capabilities: [QMPCommand.CapabilityState] = [.init(capability: "mapped-ram", state: true)]
        if channels != nil { capabilities.append(.init(capability: "multifd", state: true)) }
        if incremental { capabilities.append(.init(capability: "x-ferry-incremental", state: true)) }
        #expect(machine.execute(.migrateSetCapabilities(capabilities)) == .success(.object([:])))
        #expect(machine.execute(.migrateSetParameters(["multifd-channels": .int(Int64(channels ?? 2)), "direct-io": .bool(direct),
                                                       "max-bandwidth": .int(8 << 30)])) == .success(.object([:])))
    }

    /// Saves `source` into `path` and waits for the outcome.
    func save(_ source: Machine, to path: String) async throws -> MigrationInfo {
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        try await kit.waitFor { kit.outgoingStatus(source).isFinished && kit.outgoingStatus(source) != .none }
        return try #require(source.outgoingMigration)
    }

    /// Restores `path` into a fresh paused machine and checks it against `source` page for page,
    /// then lets it run: its heartbeats go on and its verifier stays clean.
    func restoreMatches(_ source: Machine, from path: String, backend: MemoryBackend = .anon, channels: Int? = nil, direct: Bool = false) async throws {
        let (restored, capture) = try machine(backend, workload: .idle, incoming: true)
        restored.start(paused: true)
        configure(restored, channels: channels, direct: direct)
        try await kit.migrate(source: nil, restored, capture: capture, uri: "file:" + path)
        #expect(restored.incomingMigration?.status.withLock { $0 } == .completed)
        let differing = try kit.differingPages(source.memory, restored.memory)
        #expect(differing.isEmpty, "\(differing.count) pages differ, first \(differing.prefix(4))")
        #expect(PageVerifier.verify(restored.memory).failureCount == 0)
        #expect(restored.execute(.cont) == .success(.object([:])))
        let beats = restored.progress.minimumHeartbeats
        try await kit.waitFor { restored.progress.minimumHeartbeats >= beats + 3 }
        #expect(restored.progress.verifyErrors == 0)
        restored.quit()
    }

    @Test("stopped and live saves, with and without multifd and direct-io, restore page for page",
          arguments: [Case(live: true, channels: nil, direct: false, backend: .anon),
                      Case(live: false, channels: 1, direct: true, backend: .anon),
                      Case(live: true, channels: 4, direct: true, backend: .memfd),
                      Case(live: true, channels: 4, direct: false, backend: .anon),
                      Case(live: false, channels: nil, direct: false, backend: .memfd),
                      Case(live: true, channels: 2, direct: true, backend: .hugetlb)])
    func savesAndRestores(_ test: Case) async throws {
        if test.backend == .hugetlb {
            try await MultifdKernelTests.withHugePages(2 * 128 + 8) { try await saveAndRestore(test) }
        } else {
            try await saveAndRestore(test)
        }
    }

    func saveAndRestore(_ test: Case) async throws {
        let path = Self.path()
        defer { unlink(path) }
        let workload = test.live ? WorkloadSpec(dirtyRate: .bytesPerSecond(32 << 20), workingSet: 64 << 20)
                                 : WorkloadSpec(dirtyRate: .idle, workingSet: 64 << 20)
        let (source, _) = try machine(test.backend, workload: workload, incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        if !test.live { #expect(source.execute(.stop) == .success(.object([:]))) }
        configure(source, channels: test.channels, direct: test.direct)
        let info = try await save(source, to: path)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        #expect(source.state == .postmigrate)
        let outcome = try #require(info.mappedRAM)
        #expect(!outcome.incremental && outcome.baseline.generation == 1)
        // The file: the layout's page areas plus its state, nothing more; zero pages are holes.
        let layout = try MappedRAMLayout(blocks: RAMMigration.layout(of: source.memory.blocks))
        let facts = try FileManager.default.attributesOfItem(atPath: path)
        let length = try #require(facts[.size] as? UInt64)
        #expect(length > layout.stateOffset && length < layout.stateOffset + (1 << 20))
        #expect(try Self.allocatedBytes(path) < Self.memory / 2, "an idle guest's zero pages should be holes")
        // Writer threads: multifd-channels, and with direct-io at least 8 (writes in flight).
        if let channels = test.channels { #expect(info.channels.filter { $0.role == .multifd }.count == (test.direct ? max(channels, 8) : channels)) }
        try await restoreMatches(source, from: path, backend: test.backend, channels: test.channels, direct: test.direct)
        source.quit()
    }

    static func allocatedBytes(_ path: String) throws -> UInt64 {
        var facts = stat()
        guard stat(path, &facts) == 0 else { throw POSIXError(.ENOENT) }
        return UInt64(facts.st_blocks) * 512
    }

    @Test("a live save of a guest dirtying at full speed takes several passes, and the file stays the guest's size")
    func liveSaveStaysBounded() async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, _) = try machine(workload: WorkloadSpec(dirtyRate: .max, workingSet: 128 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        configure(source, channels: 2, direct: false)
        // Slow enough for many passes over the working set, loose enough to converge.
        #expect(source.execute(.migrateSetParameters(["max-bandwidth": .int(256 << 20), "downtime-limit": .int(2000)])) == .success(.object([:])))
        let info = try await save(source, to: path)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        #expect(info.ram.dirtySyncCount >= 3)
        // Pages written more than once (a stream would have grown with each copy),
        // yet the file is no bigger than the guest plus its metadata.
        let outcome = try #require(info.mappedRAM)
        #expect(info.ram.normalPages > UInt64(outcome.presentPages), "\(info.ram.normalPages) pages written, \(outcome.presentPages) held")
        let layout = try MappedRAMLayout(blocks: RAMMigration.layout(of: source.memory.blocks))
        let length = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64)
        #expect(length <= layout.stateOffset + (1 << 20))
        #expect(try Self.allocatedBytes(path) <= layout.stateOffset + (1 << 20))
        try await restoreMatches(source, from: path, channels: 2)
        source.quit()
    }

    @Test("x-ferry-incremental: a second save into the same file writes only what changed, and restores the latest state",
          arguments: [false, true])
    func incrementalSave(direct: Bool) async throws {
        let path = Self.path()
        defer { unlink(path) }
        // The guest writes its 64 MiB once in its first second, then goes round again.
        let (source, _) = try machine(workload: WorkloadSpec(dirtyRate: .bytesPerSecond(64 << 20), workingSet: 64 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 12 }
        configure(source, channels: 2, direct: direct, incremental: true)
        let first = try await save(source, to: path)
        #expect(first.status == .completed, "\(first.errorDescription ?? "")")
        #expect(first.mappedRAM?.incremental == false)
        let writtenBefore = source.progress.pagesWritten
        #expect(source.execute(.cont) == .success(.object([:])))
        let beats = source.progress.minimumHeartbeats
        try await kit.waitFor { source.progress.minimumHeartbeats >= beats + 2 }       // a fifth of a second of dirtying
        let second = try await save(source, to: path)
        // What the guest wrote meanwhile, by its heartbeats (the last one up to 100 ms old:
        // at 64 MiB/s, 1638 pages it may not count yet).
        let writtenSince = source.progress.pagesWritten - writtenBefore
        #expect(second.status == .completed, "\(second.errorDescription ?? "")")
        let outcome = try #require(second.mappedRAM)
        #expect(outcome.incremental && outcome.baseline.generation == 2)
        // Only pages dirtied since: no more than the guest wrote (a loaded host makes that
        // interval, and so the count, longer), and fewer than the first save's.
        #expect(second.ram.normalPages <= writtenSince + 1638 + 256, "\(second.ram.normalPages) pages saved, \(writtenSince) written")
        #expect(second.ram.normalPages < first.ram.normalPages, "first \(first.ram.normalPages) pages, then \(second.ram.normalPages)")
        try await restoreMatches(source, from: path, channels: 2)

        // Another file is not the baseline: a full save (and tracking restarted for it).
        let other = Self.path()
        defer { unlink(other) }
        #expect(source.execute(.cont) == .success(.object([:])))
        let third = try await save(source, to: other)
        #expect(third.status == .completed, "\(third.errorDescription ?? "")")
        #expect(third.mappedRAM?.incremental == false)
        #expect(third.ram.normalPages * 2 > first.ram.normalPages)
        try await restoreMatches(source, from: other, channels: 2)
        source.quit()
    }

    @Test("QEMU's refusals for mapped-ram, and Ferry's for its own capability")
    func refusals() async throws {
        let (source, _) = try machine(workload: .idle, incoming: false)
        source.start()
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "x-ferry-incremental", state: true)]))
                == .failure(.generic("Capability 'x-ferry-incremental' requires 'mapped-ram'")))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "mapped-ram", state: true), .init(capability: "multifd", state: true)]))
                == .success(.object([:])))
        #expect(source.execute(.migrateSetParameters(["multifd-compression": .string("zstd")])) == .success(.object([:])))
        #expect(source.execute(.migrate(uri: "file:/tmp/never")) == .failure(.generic("Cannot use compression with mapped-ram")))
        #expect(source.state == .running)
        #expect(source.execute(.migrateSetParameters(["multifd-compression": .string("none")])) == .success(.object([:])))
        #expect(source.execute(.migrateSetParameters(["direct-io": .int(1)]))
                == .failure(.generic("Invalid parameter type for 'direct-io', expected: boolean")))
        #expect(source.execute(.migrate(uri: "unix:/tmp/nowhere.sock")) == .failure(.generic("Mapped-ram migration requires a file: URI")))
        #expect(source.execute(.migrate(uri: "file:/tmp/x,offset=12Q")).isFailure)
        source.quit()
    }

    @Test("direct-io on a file system without O_DIRECT (ramfs) fails the save with the reason; the source runs on")
    func directIOUnsupported() async throws {
        let directory = "/tmp/ferry-ramfs-\(getpid())"
        mkdir(directory, 0o700)
        defer { rmdir(directory) }
        guard mount("ramfs", directory, "ramfs", 0, nil) == 0 else { return }       // not root: nothing to show
        defer { umount(directory) }
        let (source, _) = try machine(workload: .idle, incoming: false)
        source.start()
        configure(source, channels: 2, direct: true)
        let info = try await save(source, to: directory + "/vm.mapped")
        #expect(info.status == .failed)
        #expect(info.errorDescription?.contains("direct-io: the file system of \(directory)/vm.mapped does not support O_DIRECT") == true,
                "\(info.errorDescription ?? "")")
        #expect(source.state == .running)
        #expect(source.execute(.migrate(uri: "file:\(directory)/vm.mapped,offset=100")) == .success(.object([:])))
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        #expect(source.outgoingMigration?.errorDescription?.contains("direct-io needs the file's offset= to be a multiple of 4096, not 100") == true)
        unlink(directory + "/vm.mapped")
        source.quit()
    }

    /// Restores `path` (a running source's) into a destination that would run it once loaded: the
    /// restore must fail and the guest never run. Its reason.
    func failedRestore(from path: String) async throws -> String {
        let (restored, capture) = try machine(workload: .idle, incoming: true)
        restored.start(paused: true)
        try restored.startIncoming(from: "file:" + path, autostart: true, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        try await kit.waitFor { restored.incomingMigration?.status.withLock({ $0 }) == .failed && capture.failure.withLock({ $0 }) != nil }
        #expect(restored.state != .running)
        restored.quit()
        return capture.failure.withLock { $0 } ?? ""
    }

    @Test("a cancelled save leaves the source running and a file that a restore refuses; a corrupt page, and a corrupt checksum table, are refused")
    func incompleteAndCorruptFiles() async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, _) = try machine(workload: WorkloadSpec(dirtyRate: .max, workingSet: 64 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        configure(source, channels: 2, direct: false)
        #expect(source.execute(.migrateSetParameters(["max-bandwidth": .int(16 << 20)])) == .success(.object([:])))
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        try await kit.waitFor { source.outgoingMigration?.status == .active }
        try await Task.sleep(for: .milliseconds(300))
        try source.cancelMigration()
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        #expect(kit.outgoingStatus(source) == .cancelled)
        #expect(source.state == .running)
        let incomplete = try await failedRestore(from: path)
        #expect(incomplete.contains("did not complete"), "\(incomplete)")

        // A complete save, then one byte of one present page flipped: the restore names that page.
        #expect(source.execute(.migrateSetParameters(["max-bandwidth": .int(8 << 30)])) == .success(.object([:])))
        let info = try await save(source, to: path)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        let layout = try MappedRAMLayout(blocks: RAMMigration.layout(of: source.memory.blocks))
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        let bitmap = try #require(try { try handle.seek(toOffset: layout.entries[0].bitmapOffset); return try handle.read(upToCount: Int(layout.entries[0].bitmapBytes)) }())
        let page = try #require(bitmap.indices.first { bitmap[$0] != 0 }.map { $0 * 8 + bitmap[$0].trailingZeroBitCount })
        try handle.seek(toOffset: layout.pageOffset(block: 0, page: page) + 100)
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: layout.pageOffset(block: 0, page: page) + 100)
        handle.write(Data([byte[0] ^ 0x5a]))
        try handle.close()
        let badPage = try await failedRestore(from: path)
        #expect(badPage.contains("page \(page) (offset \(page * 4096)) does not match its checksum"), "\(badPage)")

        // The page mended, one byte of its entry in the checksum table flipped: the table no longer
        // matches the metadata checksum, which the readers (started on the bitmap) wait for.
        let mend = try #require(FileHandle(forUpdatingAtPath: path))
        try mend.seek(toOffset: layout.pageOffset(block: 0, page: page) + 100)
        mend.write(Data(byte))
        let sumOffset = layout.entries[0].checksumsOffset + UInt64(page * 8)
        try mend.seek(toOffset: sumOffset)
        let sumByte = try #require(try mend.read(upToCount: 1))
        try mend.seek(toOffset: sumOffset)
        mend.write(Data([sumByte[0] ^ 0x5a]))
        try mend.close()
        let badTable = try await failedRestore(from: path)
        #expect(badTable.contains("block 'pc.ram': the bitmap or checksum table does not match its checksum"), "\(badTable)")
        source.quit()
    }
}

extension Result {
    var isFailure: Bool { if case .failure = self { true } else { false } }
}
