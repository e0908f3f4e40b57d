import EmbeddedGuest
import Foundation
import GuestMemory
import KVM
import Migration
import MigrationProtocol
import QMP
import Synchronization
import Testing
@testable import VMM

/// Background snapshots of a real guest: the image is the VM as it was when
/// the snapshot started (the restored guest's own verifier and the host
/// verifier find nothing wrong, while a snapshot without write protection
/// fails them, or its load refuses torn pages), the source guest runs on throughout, cancel lifts every
/// protection, and QEMU's refusals hold.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct BackgroundSnapshotKernelTests {
    let kit = MigrationKernelTests()
    static let memory: UInt64 = 256 << 20

    func machine(_ backend: MemoryBackend = .anon, workload: WorkloadSpec, incoming: Bool) throws -> (Machine, MigrationKernelTests.Capture) {
        let capture = MigrationKernelTests.Capture()
        var configuration = MachineConfiguration(memoryBytes: Self.memory, backend: backend, cpus: 2, boot: .embedded(workload))
        configuration.preallocate = false
        let machine = try Machine(configuration, incoming: incoming, serialOutput: { _ in }, events: { event in
            let status = event.data?["status"].flatMap { if case .string(let s) = $0 { s } else { nil } }
            capture.events.withLock { $0.append(status.map { "\(event.name):\($0)" } ?? event.name) }
        })
        return (machine, capture)
    }

    static func path() -> String { "/var/tmp/ferry-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).snapshot" }

    /// Into a mapped-ram file (Ferry's own combination): multifd's channels, or none, and direct-io.
    struct MappedRAM: Sendable, CustomTestStringConvertible {
        let channels: Int?
        let direct: Bool
        var testDescription: String { "mapped-ram, \(channels.map { "multifd \($0)" } ?? "no multifd"), \(direct ? "direct-io" : "buffered")" }
    }

    func enable(_ machine: Machine, bandwidth: Int64 = 8 << 30, limiter: String = "seed", mappedRAM: MappedRAM? = nil) {
        var capabilities: [QMPCommand.CapabilityState] = [.init(capability: "background-snapshot", state: true)]
        var parameters: [String: JSONValue] = ["max-bandwidth": .int(bandwidth), "x-ferry-snapshot-limiter": .string(limiter)]
        if let mappedRAM {
            capabilities.append(.init(capability: "mapped-ram", state: true))
            if let channels = mappedRAM.channels {
                capabilities.append(.init(capability: "multifd", state: true))
                parameters["multifd-channels"] = .int(Int64(channels))
            }
            parameters["direct-io"] = .bool(mappedRAM.direct)
        }
        #expect(machine.execute(.migrateSetCapabilities(capabilities)) == .success(.object([:])))
        #expect(machine.execute(.migrateSetParameters(parameters)) == .success(.object([:])))
    }

    /// A guest dirtying its working set at full speed, snapshotted into a file.
    func snapshot(_ backend: MemoryBackend = .anon, to path: String, bandwidth: Int64 = 8 << 30, mappedRAM: MappedRAM? = nil,
                  wrap: @escaping (any WriteProtection) -> any WriteProtection = { $0 }) async throws -> (Machine, MigrationInfo) {
        let (source, _) = try machine(backend, workload: WorkloadSpec(dirtyRate: .max, workingSet: 64 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 && source.progress.pagesWritten > 3 * 16384 }
        enable(source, bandwidth: bandwidth, mappedRAM: mappedRAM)
        try source.startMigration(to: "file:" + path, protection: wrap)
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        return (source, try #require(source.outgoingMigration))
    }

    /// What restoring an image gave.
    struct Restored {
        /// Why the load refused the image, if it did.
        var refusal: String?
        var hostFailures = 0
        var guestErrors: UInt64 = 0
        var clean: Bool { refusal == nil && hostFailures == 0 && guestErrors == 0 }
    }

    /// Restores `path` into a fresh machine held paused, checks it with the host
    /// verifier, lets it run a while and counts the guest's own verify errors.
    func restore(_ backend: MemoryBackend = .anon, from path: String) async throws -> Restored {
        let (restored, capture) = try machine(backend, workload: .idle, incoming: true)
        restored.start(paused: true)
        defer { restored.quit() }
        try restored.startIncoming(from: "file:" + path, autostart: false, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        // `failed` is published before the reason reaches `onFailure` (the machine may end
        // there): a refused image is waited for until its reason is in.
        try await kit.waitFor {
            let status = restored.incomingMigration?.status.withLock({ $0 })
            return status == .completed || (status == .failed && capture.failure.withLock({ $0 }) != nil)
        }
        if let refusal = capture.failure.withLock({ $0 }) { return Restored(refusal: refusal) }
        var result = Restored(hostFailures: PageVerifier.verify(restored.memory).failureCount)
        #expect(restored.execute(.cont) == .success(.object([:])))
        // Long enough for each vCPU to verify its whole stripe at least once more.
        let pages = restored.progress.pagesWritten
        try await kit.waitFor { restored.progress.pagesWritten > pages + 2 * 16384 && restored.progress.minimumHeartbeats >= 3 }
        result.guestErrors = restored.progress.verifyErrors
        return result
    }

    @Test("a guest dirtying at full speed is saved as it was at the start: both verifiers clean; it ran on throughout",
          arguments: [MemoryBackend.anon, .memfd, .hugetlb])
    func pointInTime(_ backend: MemoryBackend) async throws {
        if backend == .hugetlb {
            try await MultifdKernelTests.withHugePages(2 * 128 + 8) { try await pointInTimeRun(backend) }
        } else {
            try await pointInTimeRun(backend)
        }
    }

    func pointInTimeRun(_ backend: MemoryBackend) async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, info) = try await snapshot(backend, to: path)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        // The guest ran on: never postmigrate, still beating, its own pages still fine.
        #expect(source.state == .running)
        let beats = source.progress.minimumHeartbeats
        try await kit.waitFor { source.progress.minimumHeartbeats >= beats + 2 }
        #expect(source.progress.verifyErrors == 0)
        let stats = try #require(info.snapshot)
        let units = Int(Self.memory) / backend.pageSize.byteCount
        let pages = Int(Self.memory) / 4096
        #expect(Int(stats.faultedPages + stats.scannedPages) == pages, "every page saved once: \(stats)")
        #expect(stats.writeFaults > 0 && stats.faultedUnits > 0 && Int(stats.faultedUnits) <= units, "the guest wrote while protected: \(stats)")
        #expect(info.ram.normalPages + info.ram.zeroPages == UInt64(pages))
        #expect(info.downtime != nil)
        let restored = try await restore(backend, from: path)
        #expect(restored.clean, "\(restored)")
        source.quit()
    }

    @Test("into a mapped-ram file (Ferry's own): pages at their places by multifd's writers, restored point in time",
          arguments: [MappedRAM(channels: nil, direct: false), MappedRAM(channels: 2, direct: true), MappedRAM(channels: 4, direct: false)])
    func intoMappedRAM(_ mappedRAM: MappedRAM) async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, info) = try await snapshot(to: path, mappedRAM: mappedRAM)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        #expect(source.state == .running)
        let stats = try #require(info.snapshot)
        #expect(Int(stats.faultedPages + stats.scannedPages) == Int(Self.memory) / 4096, "\(stats)")
        #expect(stats.writeFaults > 0)
        let outcome = try #require(info.mappedRAM)
        #expect(outcome.presentPages > 0 && outcome.presentPages <= Int(Self.memory) / 4096)
        // Every page at its place: the file is the guest's size plus metadata and state.
        let layout = try MappedRAMLayout(blocks: RAMMigration.layout(of: source.memory.blocks))
        let length = try #require(try FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64)
        #expect(length > layout.stateOffset && length < layout.stateOffset + (1 << 20))
        let restored = try await restore(from: path)
        #expect(restored.clean, "\(restored)")
        source.quit()
    }

    /// Write protection that protects nothing: the scan then saves pages the guest rewrote after the start.
    final class Unprotected: WriteProtection {
        let real: any WriteProtection
        init(_ real: any WriteProtection) { self.real = real }
        var unitBytes: [Int] { real.unitBytes }
        func protectAll() throws(MigrationError) {}
        func waitForFaults(timeout: Duration) throws(MigrationError) -> [WriteFault] { try real.waitForFaults(timeout: timeout) }
        func release(block: Int, offset: Int, length: Int) throws(MigrationError) {}
        func interrupt() { real.interrupt() }
        func releaseAll() throws(MigrationError) {}
    }

    @Test("without write protection (a deliberately broken ordering) the image fails: torn pages refused at load, or the verifiers find later pages")
    func brokenOrderingFails() async throws {
        let path = Self.path()
        defer { unlink(path) }
        // A slow scan, so that the guest rewrites many pages before the scan reaches them.
        let (source, info) = try await snapshot(to: path, bandwidth: 64 << 20, wrap: { Unprotected($0) })
        #expect(info.status == .completed)
        // Either the load refuses pages torn while the scan read them, or the image
        // loads and the verifiers find pages from after the start.
        let restored = try await restore(from: path)
        #expect(!restored.clean, "an image taken without protection should not pass")
        source.quit()
    }

    /// A guest dirtying at full speed whose snapshot into `path` has started, slowly.
    func startSlowSnapshot(to path: String, bandwidth: Int64) async throws -> (Machine, MigrationKernelTests.Capture) {
        let (source, events) = try machine(workload: WorkloadSpec(dirtyRate: .max, workingSet: 64 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.pagesWritten > 3 * 16384 }
        enable(source, bandwidth: bandwidth)
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        return (source, events)
    }

    @Test("migrate_cancel mid-snapshot: the guest runs on, unprotected (it writes at full speed with no fault handler)")
    func cancelLiftsProtection() async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, events) = try await startSlowSnapshot(to: path, bandwidth: 16 << 20)
        try await kit.waitFor { (source.outgoingMigration?.snapshot?.writeFaults ?? 0) > 100 }
        #expect(source.execute(.migrateCancel) == .success(.object([:])))
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        #expect(kit.outgoingStatus(source) == .cancelled)
        #expect(source.state == .running)
        #expect(events.migrationStatuses.suffix(2) == ["cancelling", "cancelled"])
        // The fault thread is gone: a page still protected would hold its vCPU for good.
        let written = source.progress.pagesWritten
        try await kit.waitFor { source.progress.pagesWritten > written + 4 * 16384 }
        source.pause()
        #expect(PageVerifier.verify(source.memory).failureCount == 0)
        #expect(source.progress.verifyErrors == 0)
        source.quit()
    }

    @Test("into a mapped-ram file on a file system that fills up: the snapshot fails with the reason, the guest runs on unprotected")
    func fileSystemFull() async throws {
        let directory = "/tmp/ferry-full-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkdir(directory, 0o700) == 0)
        defer { rmdir(directory) }
        // Room for most of the guest's 64 MiB working set, not all: the writers fail near the end.
        try #require(mount("tmpfs", directory, "tmpfs", 0, "size=63m") == 0, "mount: \(errno)")
        defer { umount(directory) }
        let path = directory + "/vm.snapshot"
        defer { unlink(path) }
        let (source, _) = try machine(workload: WorkloadSpec(dirtyRate: .max, workingSet: 64 << 20), incoming: false)
        source.start()
        // Every vCPU has written the working set's worth, so all of it is non-zero.  (A sum
        // over the vCPUs is not enough: on a loaded host one of them lagged, part of the
        // working set was still zero, and the snapshot fitted.)
        try await kit.waitFor {
            let progress = source.progress
            return progress.minimumHeartbeats >= 5 && progress.cpus.allSatisfy { ($0.last?.pagesWritten ?? 0) >= 16384 }
        }
        enable(source, mappedRAM: MappedRAM(channels: 2, direct: false))
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        try await kit.waitFor(seconds: 30) { kit.outgoingStatus(source).isFinished }
        #expect(kit.outgoingStatus(source) == .failed)
        let reason = source.outgoingMigration?.errorDescription ?? ""
        #expect(reason.contains("No space left on device") || reason.contains("ENOSPC"), "\(reason)")
        #expect(source.state == .running)
        // Nothing left protected: the guest writes its whole working set again.
        let written = source.progress.pagesWritten
        try await kit.waitFor { source.progress.pagesWritten > written + 4 * 16384 }
        source.quit()
    }

    @Test("a guest paused by stop during the snapshot: completed, still paused, and the image restores clean")
    func stoppedDuringSnapshot() async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, _) = try await startSlowSnapshot(to: path, bandwidth: 32 << 20)
        try await kit.waitFor { kit.outgoingStatus(source) == .active }
        #expect(source.execute(.stop) == .success(.object([:])))
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        #expect(kit.outgoingStatus(source) == .completed)
        #expect(source.state == .paused)
        #expect(source.execute(.cont) == .success(.object([:])))
        let restored = try await restore(from: path)
        #expect(restored.clean, "\(restored)")
        source.quit()
    }

    @Test("the VMM's own writes to guest RAM go through the same protection: the image keeps the page as it was")
    func vmmWritesAreProtected() async throws {
        let path = Self.path()
        defer { unlink(path) }
        let (source, _) = try machine(workload: WorkloadSpec(dirtyRate: .idle, workingSet: 16 << 20), incoming: false)
        source.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        enable(source, bandwidth: 16 << 20)
        // A page near the end of RAM, which the slow scan reaches last.
        let target = GuestAddress(Self.memory - (8 << 20))
        let before = try source.memory.read(at: target, count: 4096)
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        try await kit.waitFor { kit.outgoingStatus(source) == .active }
        let marker = [UInt8](repeating: 0xA5, count: 4096)
        try source.memory.write(marker, at: target)          // held until the handler has copied the page
        #expect(try source.memory.read(at: target, count: 4096) == marker)
        try await kit.waitFor { kit.outgoingStatus(source).isFinished }
        #expect(kit.outgoingStatus(source) == .completed)
        #expect((source.outgoingMigration?.snapshot?.faultedUnits ?? 0) >= 1)
        let (restored, capture) = try machine(workload: .idle, incoming: true)
        restored.start(paused: true)
        try await kit.migrate(source: nil, restored, capture: capture, uri: "file:" + path)
        #expect(try restored.memory.read(at: target, count: 4096) == before)
        restored.quit()
        source.quit()
    }

    @Test("QEMU's refusals: background-snapshot with auto-converge or multifd (unless into a mapped-ram file)")
    func refusals() throws {
        let (source, _) = try machine(workload: .idle, incoming: false)
        source.start(paused: true)
        for other in ["auto-converge", "multifd"] {
            let reply = source.execute(.migrateSetCapabilities([.init(capability: "background-snapshot", state: true),
                                                                .init(capability: other, state: true)]))
            #expect(reply == .failure(.generic("Background-snapshot is not compatible with \(other)")))
        }
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "background-snapshot", state: true)])) == .success(.object([:])))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "multifd", state: true)]))
                == .failure(.generic("Background-snapshot is not compatible with multifd")))
        // With mapped-ram, multifd's threads write the file (Ferry's own combination).
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "mapped-ram", state: true), .init(capability: "multifd", state: true)]))
                == .success(.object([:])))
        #expect(source.execute(.migrateSetParameters(["x-ferry-snapshot-limiter": .string("fast")]))
                == .failure(.generic("Parameter 'x-ferry-snapshot-limiter' does not accept value 'fast' (off, seed or latency)")))
        for name in ["x-ferry-snapshot-fault-threshold", "x-ferry-snapshot-poll", "x-ferry-snapshot-target-latency"] {
            for bad: Int64 in [0, -5, 10_000_001] {
                #expect(source.execute(.migrateSetParameters([name: .int(bad)]))
                        == .failure(.generic("Parameter '\(name)' expects an integer in the range of 1 to 10000000 microseconds")))
            }
        }
        #expect(source.execute(.migrateSetParameters(["x-ferry-snapshot-fault-only-pages": .int(0)]))
                == .failure(.generic("Parameter 'x-ferry-snapshot-fault-only-pages' expects an integer in the range of 1 to 1000000")))
        #expect(source.execute(.migrateSetParameters(["x-ferry-snapshot-limiter": .int(1)]))
                == .failure(.generic("Invalid parameter type for 'x-ferry-snapshot-limiter', expected: string")))
        source.quit()
    }
}
