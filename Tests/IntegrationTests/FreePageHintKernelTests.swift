import Devices
import EmbeddedGuest
import Foundation
import GuestMemory
import KVM
import Migration
import QMP
import Synchronization
import Testing
@testable import VMM

/// Free page hints end to end on real KVM: the embedded guest's balloon driver
/// reports its free memory to Ferry's virtio-balloon during a migration, the
/// freed memory stays out of the stream, and nothing the guest uses is lost,
/// including memory it allocates again while the migration runs.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct FreePageHintKernelTests {
    final class Serial: Sendable {
        let text = Mutex("")
        var lines: [String] { text.withLock { $0 }.split(separator: "\n").map(String.init) }
        func contains(_ prefix: String) -> Bool { lines.contains { $0.hasPrefix(prefix) } }
    }

    func machine(memory: UInt64, workload: WorkloadSpec = .idle, hints: Bool, incoming: Bool = false) throws -> (Machine, Serial) {
        let serial = Serial()
        var configuration = MachineConfiguration(memoryBytes: memory, cpus: 1, boot: .embedded(workload))
        configuration.devices = [.virtioBalloon(freePageHint: hints)]
        configuration.preallocate = true        // first touch on this host is slow; the guest's first pass is not what is measured
        let machine = try Machine(configuration, incoming: incoming,
                                  serialOutput: { bytes in serial.text.withLock { $0 += String(decoding: bytes, as: UTF8.self) } })
        return (machine, serial)
    }

    func waitFor(seconds: Double = 60, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out waiting", sourceLocation: sourceLocation); return }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    func migrate(_ source: Machine, to destination: Machine) async throws {
        let uri = "unix:/tmp/ferry-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        try destination.startIncoming(from: uri, autostart: false, onFailure: { reason in Issue.record("destination: \(reason)") })
        #expect(source.execute(.migrate(uri: uri)) == .success(.object([:])))
        try await waitFor { source.outgoingMigration?.status.isFinished == true }
        try await waitFor { [.completed, .failed].contains(destination.incomingMigration?.status.withLock({ $0 })) }
    }

    /// Pages below the work area (the guest's image, rings, bitmap) and every
    /// page the guest has in use must be equal on both sides.
    func differingInUsePages(_ source: GuestMemoryMap, _ destination: GuestMemoryMap) throws -> [UInt64] {
        let inUse = try #require(GuestABI.writtenPages(in: source))
        #expect(inUse.meansInUse)
        var differing: [UInt64] = []
        for range in source.ramRanges {
            var address = range.start.rawValue
            while address < range.end.rawValue {
                if address < GuestABI.workBase || inUse.contains(address / 4096),
                   try source.read(at: GuestAddress(address), count: 4096) != destination.read(at: GuestAddress(address), count: 4096) {
                    differing.append(address)
                }
                address += 4096
            }
        }
        return differing
    }

    static let memory: UInt64 = 512 << 20
    static let workload = WorkloadSpec(dirtyRate: .idle, workingSet: 256 << 20, free: 192 << 20)

    @Test("an idle guest that freed 192 of its 256 MiB: with hints the freed memory stays out of the stream, without it is sent",
          arguments: ["hints", "no hints", "postcopy-ram"])
    func freedMemoryStaysOut(_ mode: String) async throws {
        let hints = mode != "no hints"
        let (source, sourceSerial) = try machine(memory: Self.memory, workload: Self.workload, hints: hints)
        let (destination, destinationSerial) = try machine(memory: Self.memory, hints: hints, incoming: true)
        source.start()
        destination.start()
        if mode == "postcopy-ram" {
            // QEMU's rule: no hints when postcopy may follow (a page never sent would stall a faulting vCPU).
            for machine in [source, destination] { try machine.setMigrationCapabilities([("postcopy-ram", true)]) }
        }
        try await waitFor { sourceSerial.contains("FREE pages=") && sourceSerial.contains("BL ready") }
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(8 << 30)]))
        try await migrate(source, to: destination)
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")

        let sent = info.ram.normalPages * 4096
        let inUse: UInt64 = (256 - 192) << 20, freed: UInt64 = 192 << 20
        let image: UInt64 = 8 << 20           // below the work area: the image, its bitmap, stacks and rings
        if mode == "hints" {
            #expect(sent <= inUse + image + freed / 10, "sent \(sent >> 20) MiB with hints")
            #expect(info.ram.freePageHintPages * 4096 >= freed * 9 / 10, "hints kept \(info.ram.freePageHintPages) pages out")
            #expect(sourceSerial.contains("BL hints round=1 blocks="))
        } else {
            #expect(sent >= inUse + freed, "sent \(sent >> 20) MiB without hints")
            #expect(info.ram.freePageHintPages == 0)
            #expect(!sourceSerial.contains("BL hints round="), "the guest was never asked")
        }
        if case .success(let json) = source.execute(.queryMigrate) {
            #expect(json["x-ferry-free-page-hints"]?["skipped-pages"] == (hints ? .int(Int64(info.ram.freePageHintPages)) : nil))
        }

        // Everything the guest uses arrived; the destination guest verifies clean and,
        // told DONE, takes its reported memory back.
        #expect(try differingInUsePages(source.memory, destination.memory) == [])
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        #expect(destination.execute(.cont) == .success(.object([:])))
        try await waitFor { destination.progress.minimumHeartbeats >= 5 }
        if mode == "hints" { try await waitFor { destinationSerial.contains("BL hints done returned=") } }
        destination.pause()
        #expect(destination.progress.verifyErrors == 0)
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        source.quit()
        destination.quit()
    }

    @Test("a guest allocating and freeing while it dirties, reusing hinted memory during the migration: nothing is lost")
    func reusedHintedMemoryArrives() async throws {
        // 8 MB/s of sweeping plus 40 MB/s of churn (a 4 MiB block every heartbeat).
        let workload = WorkloadSpec(dirtyRate: .bytesPerSecond(8 << 20), workingSet: 64 << 20, free: 32 << 20, churn: 32 << 20)
        let (source, sourceSerial) = try machine(memory: 256 << 20, workload: workload, hints: true)
        let (destination, _) = try machine(memory: 256 << 20, hints: true, incoming: true)
        source.start()
        destination.start()
        try await waitFor { sourceSerial.contains("FREE pages=") && sourceSerial.contains("BL ready") }
        // Slow enough for several passes, each a hint round, while the churn takes hinted blocks back.
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(96 << 20), "downtime-limit": .int(100)]))
        try await migrate(source, to: destination)
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        let takenBack = sourceSerial.lines.compactMap { line -> Int? in
            guard line.hasPrefix("BL hints round="), let field = line.split(separator: " ").last, field.hasPrefix("taken-back=") else { return nil }
            return Int(field.dropFirst("taken-back=".count))
        }.max() ?? 0
        #expect(takenBack > 0, "the churn reused reported blocks while the migration ran")
        #expect(info.ram.freePageHintPages > 0)

        #expect(try differingInUsePages(source.memory, destination.memory) == [])
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        // On the destination the churn verifies each block it frees: every live block
        // (8 of 4 MiB, one a heartbeat) is checked within a second or two.
        let before = destination.progress.minimumHeartbeats
        #expect(destination.execute(.cont) == .success(.object([:])))
        try await waitFor { destination.progress.minimumHeartbeats >= before + 30 }
        destination.pause()
        #expect(destination.progress.verifyErrors == 0)
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        source.quit()
        destination.quit()
    }
}
