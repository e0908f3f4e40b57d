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

/// `x-ferry-lazy-restore`: a mapped-ram file restored with the guest running
/// before its memory is read; faults served from the file, the rest
/// prefetched; page for page in the end, and a corrupt page never placed.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct LazyRestoreKernelTests {
    let kit = MigrationKernelTests()
    let files = MappedRAMKernelTests()

    /// A live save of a guest writing 256 MiB of its 1 GiB at 32 MB/s; the source ends stopped, as saved.
    func savedGuest(_ path: String) async throws -> Machine {
        var configuration = MachineConfiguration(memoryBytes: 1 << 30, cpus: 2,
                                                 boot: .embedded(WorkloadSpec(dirtyRate: .bytesPerSecond(32 << 20), workingSet: 256 << 20)))
        configuration.preallocate = true        // the first pass is not what is tested
        let source = try Machine(configuration, serialOutput: { _ in })
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 && source.progress.cpus.allSatisfy { ($0.last?.pass ?? 0) >= 1 } }
        files.configure(source, channels: 2, direct: false)
        let info = try await files.save(source, to: path)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        return source
    }

    func restoring(_ path: String, run: Bool) throws -> (Machine, MigrationKernelTests.Capture) {
        let capture = MigrationKernelTests.Capture()
        let restored = try Machine(MachineConfiguration(memoryBytes: 1 << 30, cpus: 2, boot: .embedded(.idle)), incoming: true,
                                   serialOutput: { _ in })
        restored.start(paused: !run)
        #expect(restored.execute(.migrateSetCapabilities([.init(capability: "mapped-ram", state: true),
                                                          .init(capability: "multifd", state: true),
                                                          .init(capability: "x-ferry-lazy-restore", state: true)])) == .success(.object([:])))
        try restored.startIncoming(from: "file:" + path, autostart: run, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        return (restored, capture)
    }

    func lazyStatistics(_ machine: Machine) -> LazyRestoreStatistics? {
        machine.incomingMigration?.destination.withLock { $0 }?.lazyRestoreStatistics
    }

    @Test("the guest runs before its memory is read; faults come from the file; a paused restore ends page for page")
    func runsBeforeItsMemoryIsRead() async throws {
        let path = MappedRAMKernelTests.path()
        defer { unlink(path) }
        let source = try await savedGuest(path)

        // Paused (-S): nothing but the prefetch reads the file, and the result is the saved guest.
        let (paused, pausedCapture) = try restoring(path, run: false)
        try await kit.waitFor { paused.incomingMigration?.status.withLock({ $0 }) == .completed }
        try await kit.waitFor { lazyStatistics(paused)?.complete == true }
        #expect(pausedCapture.failure.withLock { $0 } == nil)
        let differing = try kit.differingPages(source.memory, paused.memory)
        #expect(differing.isEmpty, "\(differing.count) pages differ, first \(differing.prefix(4))")
        paused.quit()

        // Running: the guest starts once the device state is in, long before the pages are.
        let begin = ContinuousClock.now
        let (running, capture) = try restoring(path, run: true)
        try await kit.waitFor { running.state == .running }
        let toRunning = ContinuousClock.now - begin
        let early = try #require(lazyStatistics(running))
        #expect(!early.complete, "the guest runs while its memory is still being read")
        // Not migrated away meanwhile: the pages still to come are in no dirty log. (The guest may
        // run a moment before the incoming migration says completed, and `migrate` refuses that
        // sooner, for another reason: wait for it.)
        try await kit.waitFor { running.incomingMigration?.status.withLock({ $0 }) == .completed }
        do {
            try running.startMigration(to: "file:/nonexistent-ferry-dir/lazy")
            #expect(lazyStatistics(running)?.complete == true, "a migration started while the restore was placing pages")
        } catch {
            #expect("\(error)".contains("still being restored"), "\(error)")
        }
        try await kit.waitFor { lazyStatistics(running)?.complete == true }
        let done = try #require(lazyStatistics(running))
        #expect(done.faults > 0, "the running guest touched pages before the prefetch reached them")
        #expect(done.loadedUnits == done.totalUnits && done.totalUnits == (1 << 30) / 4096)
        #expect(done.faultPages + done.prefetchedPages >= done.totalUnits)
        try await kit.waitFor { running.progress.minimumHeartbeats >= 5 }
        running.pause()
        #expect(running.progress.verifyErrors == 0)
        #expect(PageVerifier.verify(running.memory).failureCount == 0)
        #expect(capture.failure.withLock { $0 } == nil)
        if case .success(let json) = running.execute(.queryMigrate) {
            #expect(json["x-ferry-lazy-restore"]?["complete"] == .bool(true))
        }
        print("lazy restore: running after \(toRunning), loaded in \(done.loadTime.map { "\($0)" } ?? "?"), \(done.faults) faults")
        running.quit()
        source.quit()
    }

    @Test("a corrupt page is never placed: the guest stops, and the error names the page")
    func corruptPageStopsTheGuest() async throws {
        let path = MappedRAMKernelTests.path()
        defer { unlink(path) }
        let source = try await savedGuest(path)
        let layout = try MappedRAMLayout(blocks: RAMMigration.layout(of: source.memory.blocks))
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        let bitmap = try #require(try { try handle.seek(toOffset: layout.entries[0].bitmapOffset); return try handle.read(upToCount: Int(layout.entries[0].bitmapBytes)) }())
        // The last page the guest wrote: the prefetch reaches it late, so the guest runs first.
        let page = try #require(bitmap.indices.last { bitmap[$0] != 0 }.map { $0 * 8 + 7 - bitmap[$0].leadingZeroBitCount })
        try handle.seek(toOffset: layout.pageOffset(block: 0, page: page) + 100)
        let byte = try #require(try handle.read(upToCount: 1))
        try handle.seek(toOffset: layout.pageOffset(block: 0, page: page) + 100)
        handle.write(Data([byte[0] ^ 0x5a]))
        try handle.close()
        let (restored, _) = try restoring(path, run: true)
        try await kit.waitFor { restored.state == .internalError }
        let error = restored.incomingMigration?.error.withLock { $0 } ?? ""
        #expect(error.contains("page \(page) (offset \(page * 4096)) does not match its checksum"), "\(error)")
        #expect(lazyStatistics(restored)?.complete == false)
        // The page was never placed: its bytes in the destination are not the corrupt ones.
        restored.quit()
        source.quit()
    }
}
