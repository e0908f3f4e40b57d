import Foundation
import Synchronization
import Testing
import EmbeddedGuest
import GuestMemory
import KVM
import Migration
import QMP
@testable import VMM

/// Postcopy with a real guest that dirties its memory at full speed: the
/// destination runs it from the switch on and faults in what it lacks, on
/// anonymous, memfd and hugetlb memory.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct PostcopyKernelTests {
    let kit = MigrationKernelTests()
    static let memory: UInt64 = 256 << 20
    /// Writes at full speed, and reads a random page after each write (its verifier checks both).
    static let dirtying = WorkloadSpec(dirtyRate: .max, workingSet: 128 << 20, randomAccess: true)

    func machine(_ backend: MemoryBackend, workload: WorkloadSpec = .idle, incoming: Bool,
                 preallocate: Bool = false) throws -> (Machine, MigrationKernelTests.Capture) {
        let capture = MigrationKernelTests.Capture()
        var configuration = MachineConfiguration(memoryBytes: Self.memory, backend: backend, cpus: 2, boot: .embedded(workload))
        configuration.preallocate = preallocate
        let machine = try Machine(configuration, incoming: incoming, serialOutput: { _ in }, events: { event in
            var name = event.name
            if name == "MIGRATION", case .object(let data)? = event.data, case .string(let status)? = data["status"] { name += ":" + status }
            capture.events.withLock { $0.append(name) }
        })
        return (machine, capture)
    }

    /// Both sides with `postcopy-ram`; the source slowed so that precopy cannot finish alone.
    func prepare(_ source: Machine, _ destination: Machine, postcopyBandwidth: Int64 = 0, preempt: Bool = false) {
        for side in [source, destination] {
            #expect(side.execute(.migrateSetCapabilities([.init(capability: "postcopy-ram", state: true),
                                                          .init(capability: "postcopy-preempt", state: preempt)])) == .success(.object([:])))
        }
        // 4 MiB/s: under what the guest dirties, so precopy alone never converges.
        #expect(source.execute(.migrateSetParameters(["max-bandwidth": .int(4 << 20), "downtime-limit": .int(1),
                                                      "max-postcopy-bandwidth": .int(postcopyBandwidth)])) == .success(.object([:])))
    }

    /// Migrates, switching to postcopy once some pages are out; `autostart`: the destination runs from the switch.
    func migrateWithPostcopy(_ source: Machine, to destination: Machine, capture: MigrationKernelTests.Capture,
                             autostart: Bool, waitForEnd: Bool = true) async throws {
        let uri = "unix:" + MigrationKernelTests.socketPath()
        try destination.startIncoming(from: uri, autostart: autostart, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        #expect(source.execute(.migrate(uri: uri)) == .success(.object([:])))
        try await kit.waitFor { (source.outgoingMigration?.ram.normalPages ?? 0) > 1024 || source.outgoingMigration?.status.isFinished == true }
        #expect(source.outgoingMigration?.status == .active, "\(source.outgoingMigration?.errorDescription ?? "")")
        #expect(source.execute(.migrateStartPostcopy) == .success(.object([:])))
        guard waitForEnd else { return }
        try await kit.waitFor { source.outgoingMigration?.status.isFinished == true }
        try await kit.waitFor { [.completed, .failed].contains(destination.incomingMigration?.status.withLock({ $0 })) }
        try await kit.waitFor { ["completed", "failed"].contains(capture.migrationStatuses.last ?? "") }
    }

    @Test("the destination runs from the switch and faults its pages in; the guest verifies clean and beats on",
          arguments: [MemoryBackend.anon, .memfd, .hugetlb])
    func postcopyRunsOnDestination(_ backend: MemoryBackend) async throws {
        try await on(backend) { try await runsOnDestination(backend, preempt: false) }
    }

    /// Runs `body` with huge pages reserved for both machines when `backend` is hugetlb.
    func on(_ backend: MemoryBackend, _ body: () async throws -> Void) async throws {
        if backend == .hugetlb {
            try await MultifdKernelTests.withHugePages(2 * Int(Self.memory >> 21) + 8, body)
        } else {
            try await body()
        }
    }

    @Test("with postcopy-preempt the pages asked for travel on their own channel; the guest verifies clean",
          arguments: [MemoryBackend.anon, .hugetlb])
    func preemptRunsOnDestination(_ backend: MemoryBackend) async throws {
        try await on(backend) { try await runsOnDestination(backend, preempt: true) }
    }

    func runsOnDestination(_ backend: MemoryBackend, preempt: Bool) async throws {
        let (source, sourceEvents) = try machine(backend, workload: Self.dirtying, incoming: false)
        let (destination, capture) = try machine(backend, incoming: true)
        source.start()
        destination.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        // Slow enough after the switch that the running guest asks for pages before they come anyway.
        prepare(source, destination, postcopyBandwidth: 64 << 20, preempt: preempt)
        #expect(destination.execute(.migrateSetCapabilities([.init(capability: "postcopy-blocktime", state: true)])) == .success(.object([:])))
        try await migrateWithPostcopy(source, to: destination, capture: capture, autostart: true)
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        // Short of completed, pages may be missing on the destination, and a read of one waits for ever.
        guard info.status == .completed else { source.quit(); destination.quit(); return }
        #expect(capture.failure.withLock { $0 } == nil)
        #expect(source.state == .postmigrate)
        #expect(destination.state == .running)
        try await kit.waitForFinalEvent(sourceEvents)
        #expect(sourceEvents.migrationStatuses == ["setup", "active", "device", "postcopy-active", "completed"])
        #expect(capture.migrationStatuses == ["setup", "active", "postcopy-active", "completed"])
        #expect(info.postcopyBytes > 0)
        // The guest faulted on pages it had not received, and asked for them.
        let stats = try #require(destination.incomingMigration?.destination.withLock { $0 }?.postcopyStatistics)
        #expect(stats.requests > 0 && stats.faults >= stats.requests, "\(stats)")
        #expect(info.postcopyRequests == stats.requests)
        // postcopy-blocktime, in QEMU's figures.  Which vCPU waited is told by the faulting thread;
        // KVM's async page faults hand many faults to kernel workers, which count as non-vCPU
        // threads (on memfd all of them here), as in QEMU.
        let blocktime = try #require(stats.blocktime)
        #expect(blocktime.vcpuBlocktime.count == 2 && blocktime.vcpuLatency.count == 2)
        #expect(blocktime.latencyDistribution.count == 24 && blocktime.latencyDistribution.reduce(0, +) >= stats.requests)
        #expect(blocktime.latency > 0)
        if case .success(let json) = destination.execute(.queryMigrate) {
            #expect(json["postcopy-vcpu-blocktime"].map { if case .array(let list) = $0 { list.count } else { 0 } } == 2)
            #expect(json["postcopy-latency-dist"] != nil && json["postcopy-blocktime"] != nil && json["postcopy-non-vcpu-latency"] != nil)
        }
        let urgent = info.channels.first { $0.role == .postcopyPreempt }
        if preempt {
            // Every request was served there (or dropped inside a huge page the background was sending).
            #expect(info.postcopyUrgentPages > 0 && (urgent?.bytes ?? 0) > 0, "\(info.channels)")
        } else {
            #expect(urgent == nil && info.postcopyUrgentPages == 0 && info.postcopyDroppedRequests == 0)
        }
        // It runs on: heartbeats continue, its own verifier finds every page as it left it.
        let beats = destination.progress.minimumHeartbeats
        try await kit.waitFor(seconds: 20) { destination.progress.minimumHeartbeats >= beats + 5 }
        #expect(destination.progress.minimumHeartbeats >= beats + 5,
                "the guest beats on: \(destination.state), faults \(destination.deviceFaults.firstFault ?? "none"), events \(capture.events.withLock { $0 })")
        #expect(destination.progress.verifyErrors == 0)
        destination.pause()
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        source.quit()
        destination.quit()
    }

    @Test("a destination kept paused (-S) receives every page after the switch: page for page the source's memory",
          arguments: [(MemoryBackend.anon, false), (.hugetlb, false), (.hugetlb, true)])
    func pausedDestinationPageForPage(_ backend: MemoryBackend, preallocated: Bool) async throws {
        try await on(backend) { try await pausedPageForPage(backend, preallocated: preallocated) }
    }

    /// `preallocated`: the destination with -mem-prealloc.
    func pausedPageForPage(_ backend: MemoryBackend, preallocated: Bool) async throws {
        let (source, _) = try machine(backend, workload: Self.dirtying, incoming: false)
        let (destination, capture) = try machine(backend, incoming: true, preallocate: preallocated)
        source.start()
        destination.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        prepare(source, destination)
        try await migrateWithPostcopy(source, to: destination, capture: capture, autostart: false)
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        // Short of completed, pages may be missing on the destination, and a read of one waits for ever.
        guard info.status == .completed else { source.quit(); destination.quit(); return }
        #expect(destination.state == .paused)
        #expect(info.postcopyRequests == 0, "a paused guest asks for nothing")
        let stats = try #require(destination.incomingMigration?.destination.withLock { $0 }?.postcopyStatistics)
        if preallocated {
            // -mem-prealloc: every page stays backed, the zero huge pages placed too.
            #expect(stats.zeroLeft == 0, "\(stats)")
            for block in destination.memory.blocks {
                let chunks = block.mapping.residentChunks(chunkBytes: 2 << 20)
                #expect(chunks.count == chunks.pageCount, "RAM block '\(block.name)': \(chunks.count) of \(chunks.pageCount) chunks backed")
            }
        } else if backend == .hugetlb {
            // The huge pages past the guest's 128 MiB working set (most of RAM's upper half) came
            // as zero pages, and were left unplaced.
            #expect(stats.zeroLeft >= (Self.memory / 4) >> 12, "\(stats)")
        } else {
            #expect(stats.zeroLeft == 0, "4 KiB zero pages are placed (the shared zero page)")
        }
        #expect(try kit.differingPages(source.memory, destination.memory) == [])
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        #expect(destination.execute(.cont) == .success(.object([:])))
        let beats = destination.progress.minimumHeartbeats
        try await kit.waitFor { destination.progress.minimumHeartbeats >= beats + 3 }
        #expect(destination.progress.verifyErrors == 0)
        source.quit()
        destination.quit()
    }

    @Test("a destination that goes away in postcopy leaves the source postcopy-paused, never running, and says why")
    func destinationGoneInPostcopy() async throws {
        let (source, _) = try machine(.anon, workload: Self.dirtying, incoming: false)
        let (destination, capture) = try machine(.anon, incoming: true)
        source.start()
        destination.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        prepare(source, destination, postcopyBandwidth: 4 << 20)     // 128 MiB takes half a minute
        try await migrateWithPostcopy(source, to: destination, capture: capture, autostart: true, waitForEnd: false)
        try await kit.waitFor { source.outgoingMigration?.status == .postcopyActive }
        #expect(source.execute(.migrateCancel) == .failure(.generic("Postcopy migration in progress, cannot cancel.")))
        destination.quit()
        try await kit.waitFor { source.outgoingMigration?.status == .postcopyPaused }
        let info = try #require(source.outgoingMigration)
        #expect(info.errorDescription?.contains("the guest runs on the destination, where its newest memory is, so it stays stopped here") == true,
                "\(info.errorDescription ?? "")")
        #expect(source.state == .finishMigrate)
        try await Task.sleep(for: .milliseconds(300))
        #expect(source.state == .finishMigrate, "the source guest never runs again on its own")
        #expect(source.execute(.cont) == .failure(.generic("the guest cannot be resumed from state 'finish-migrate': it runs on the "
                                                           + "destination of a postcopy migration (postcopy-paused), where its newest memory is")))
        #expect(source.execute(.migrateCancel) == .failure(.generic("Postcopy migration in progress, cannot cancel.")))
        source.quit()
        try await kit.waitFor { source.outgoingMigration?.status == .failed }
    }

    @Test("QEMU's refusals: migrate-start-postcopy without the capability or a migration; postcopy with multifd or mapped-ram")
    func refusals() async throws {
        let (source, _) = try machine(.anon, incoming: false)
        source.start()
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "postcopy-preempt", state: true)]))
                == .failure(.generic("Postcopy preempt requires postcopy-ram")))
        #expect(source.execute(.migrateStartPostcopy)
                == .failure(.generic("Enable postcopy with migrate_set_capability before the start of migration")))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "postcopy-ram", state: true)])) == .success(.object([:])))
        #expect(source.execute(.migrateStartPostcopy) == .failure(.generic("Postcopy must be started after migration has been started")))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "multifd", state: true)]))
                == .failure(.generic("Postcopy is not yet compatible with multifd")))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "mapped-ram", state: true)]))
                == .failure(.generic("Mapped-ram migration is incompatible with postcopy")))
        #expect(source.execute(.migrateSetCapabilities([.init(capability: "background-snapshot", state: true)]))
                == .failure(.generic("Background-snapshot is not compatible with postcopy-ram")))
        source.quit()
        let (destination, _) = try machine(.anon, incoming: true)
        destination.start()
        #expect(destination.execute(.migrateSetCapabilities([.init(capability: "postcopy-ram", state: true)])) == .success(.object([:])))
        #expect(destination.execute(.migrateIncoming(uri: "unix:" + MigrationKernelTests.socketPath(), exitOnError: false)) == .success(.object([:])))
        #expect(destination.execute(.migrateSetCapabilities([.init(capability: "postcopy-preempt", state: true)]))
                == .failure(.generic("Postcopy preempt must be set before incoming starts")))
        destination.quit()
    }
}
