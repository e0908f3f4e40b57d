import Foundation
import Synchronization
import Testing
import EmbeddedGuest
import GuestMemory
import KVM
import Migration
import QMP
import Transport
@testable import VMM

/// A relay between a source and its destination that a test cuts, as a
/// network failure would: every connection made to `address` is forwarded,
/// both ways, to `target`, until `cut` shuts them all.
final class Relay: Sendable {
    let listener: IncomingListener
    let target: MigrationURI
    let channels = Mutex<[DescriptorChannel]>([])
    var address: MigrationURI { listener.address }

    init(to target: MigrationURI) throws {
        self.target = target
        listener = try Transport.listen(.unix(path: MigrationKernelTests.socketPath()))
        Thread { [self] in
            while let inbound = try? listener.accept() {
                guard let outbound = try? Transport.connect(target) else {
                    inbound.close()
                    continue
                }
                channels.withLock { $0 += [inbound, outbound] }
                Self.pump(inbound, to: outbound)
                Self.pump(outbound, to: inbound)
            }
        }.start()
    }

    static func pump(_ from: DescriptorChannel, to: DescriptorChannel) {
        Thread {
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while let count = try? from.read(upTo: buffer.count, into: &buffer, at: 0), count > 0 {
                guard (try? to.write(Array(buffer[0..<count]))) != nil else { break }
            }
            // One way ended: the connection is gone both ways, as a broken link leaves it.
            from.shutdown()
            to.shutdown()
        }.start()
    }

    /// Breaks every connection and refuses new ones.
    func cut() {
        listener.close()
        for channel in channels.withLock({ $0 }) { channel.shutdown() }
    }
}

/// Postcopy recovery with a real guest that dirties and reads its memory at
/// random: the connection is cut (or paused with `migrate-pause`) in the
/// middle of postcopy, both sides wait in `postcopy-paused` with the guest
/// stopped on the source, `migrate-recover` and `migrate` with `resume: true`
/// reconnect, and the migration completes: page for page, and the guest's own
/// verifier clean.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct PostcopyRecoveryKernelTests {
    let kit = MigrationKernelTests()
    let postcopy = PostcopyKernelTests()

    struct Case: Sendable, CustomTestStringConvertible {
        let backend: MemoryBackend
        let preempt: Bool
        /// The destination runs from the switch (it faults pages in); otherwise -S, compared page for page.
        let running: Bool
        var testDescription: String { "\(backend.rawValue)\(preempt ? ", preempt" : ""), destination \(running ? "running" : "paused (-S)")" }
    }

    @Test("a connection cut in postcopy pauses both sides; migrate-recover and migrate resume:true complete it",
          arguments: [Case(backend: .anon, preempt: false, running: false), Case(backend: .anon, preempt: false, running: true),
                      Case(backend: .anon, preempt: true, running: true), Case(backend: .hugetlb, preempt: true, running: true)])
    func cutAndRecover(_ test: Case) async throws {
        if test.backend == .hugetlb {
            try await MultifdKernelTests.withHugePages(2 * 128 + 8) { try await cutAndRecover(test, pauseWith: nil) }
        } else {
            try await cutAndRecover(test, pauseWith: nil)
        }
    }

    @Test("migrate-pause on either side pauses both; recovery completes it", arguments: ["source", "destination"])
    func pauseAndRecover(_ side: String) async throws {
        try await cutAndRecover(Case(backend: .anon, preempt: true, running: true), pauseWith: side)
    }

    /// Migrates through a relay, switches to postcopy, breaks the connection
    /// (cuts the relay, or `migrate-pause` on `pauseWith`), checks both sides
    /// paused, recovers and checks the outcome.
    func cutAndRecover(_ test: Case, pauseWith: String?) async throws {
        let (source, sourceEvents) = try postcopy.machine(test.backend, workload: PostcopyKernelTests.dirtying, incoming: false)
        let (destination, capture) = try postcopy.machine(test.backend, incoming: true)
        source.start()
        destination.start()
        try await kit.waitFor { source.progress.minimumHeartbeats >= 5 }
        // Slow after the switch, so the cut comes with most pages still to send.
        postcopy.prepare(source, destination, postcopyBandwidth: 8 << 20, preempt: test.preempt)
        let listening = MigrationURI.unix(path: MigrationKernelTests.socketPath())
        try destination.startIncoming(from: listening.description, autostart: test.running,
                                      onFailure: { reason in capture.failure.withLock { $0 = reason } })
        let relay = try Relay(to: listening)
        #expect(source.execute(.migrate(uri: relay.address.description)) == .success(.object([:])))
        try await kit.waitFor { (source.outgoingMigration?.ram.normalPages ?? 0) > 1024 }
        #expect(source.execute(.migrateStartPostcopy) == .success(.object([:])))
        try await kit.waitFor { destination.incomingMigration?.status.withLock({ $0 }) == .postcopyActive }
        // Some pages placed (and, running, asked for) before the break.
        try await kit.waitFor { (destination.incomingMigration?.destination.withLock({ $0 })?.postcopyStatistics?.placedPages ?? 0) > 2048 }
        if test.running {
            try await kit.waitFor { (destination.incomingMigration?.destination.withLock({ $0 })?.postcopyStatistics?.requests ?? 0) > 0 }
        }

        switch pauseWith {
        case "source": #expect(source.execute(.migratePause) == .success(.object([:])))
        case "destination": #expect(destination.execute(.migratePause) == .success(.object([:])))
        default: relay.cut()
        }
        try await kit.waitFor { source.outgoingMigration?.status == .postcopyPaused }
        try await kit.waitFor { destination.incomingMigration?.status.withLock({ $0 }) == .postcopyPaused }
        let paused = try #require(source.outgoingMigration)
        #expect(paused.errorDescription?.hasPrefix("postcopy paused (") == true, "\(paused.errorDescription ?? "")")
        if pauseWith == "source" { #expect(paused.errorDescription?.contains("Postcopy migration is paused by the user") == true) }
        let placedAtPause = destination.incomingMigration?.destination.withLock({ $0 })?.postcopyStatistics?.placedPages ?? 0
        #expect(source.state == .finishMigrate, "the source guest stays stopped")
        #expect(destination.state == (test.running ? .running : .paused))
        #expect(source.execute(.migrateCancel) == .failure(.generic("Postcopy migration in progress, cannot cancel.")))
        #expect(source.execute(.migratePause) == .failure(.generic("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")))
        #expect(source.execute(.migrateRecover(uri: "unix:/nonexistent")) == .failure(.generic("Migrate recover can only be run when postcopy is paused.")))
        #expect(destination.execute(.migrate(uri: "unix:/nonexistent", resume: true)) == .failure(.generic("Cannot resume if there is no paused migration")))

        // Resuming before the destination listens fails, and leaves the source paused, saying why.
        let recovered = MigrationURI.unix(path: MigrationKernelTests.socketPath())
        #expect(source.execute(.migrate(uri: recovered.description, resume: true)) == .success(.object([:])))
        try await kit.waitFor { source.outgoingMigration?.status == .postcopyPaused && sourceEvents.migrationStatuses.last == "postcopy-paused"
            && sourceEvents.migrationStatuses.filter { $0 == "postcopy-paused" }.count == 2 }
        #expect(source.outgoingMigration?.errorDescription?.contains("the recovery failed") == true, "\(source.outgoingMigration?.errorDescription ?? "")")

        // The recovery, QEMU's way: migrate-recover on the destination, then migrate resume:true.
        #expect(destination.execute(.migrateRecover(uri: recovered.description)) == .success(.object([:])))
        #expect(source.execute(.migrate(uri: recovered.description, resume: true)) == .success(.object([:])))
        // Unthrottled now, so the rest comes quickly (max-postcopy-bandwidth takes effect at once, as in QEMU).
        #expect(source.execute(.migrateSetParameters(["max-postcopy-bandwidth": .int(0)])) == .success(.object([:])))
        try await kit.waitFor(seconds: 90) { source.outgoingMigration?.status.isFinished == true }
        // The event follows the status: wait for it too, or the sequence below can miss its last entry.
        try await kit.waitFor { capture.migrationStatuses.last == "completed" || capture.failure.withLock({ $0 }) != nil }
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        // Short of completed, pages may be missing on the destination, and a read of one waits for ever.
        guard info.status == .completed else { relay.cut(); source.quit(); destination.quit(); return }
        #expect(capture.failure.withLock { $0 } == nil)
        #expect(info.postcopyPauses == 2)
        try await kit.waitForFinalEvent(sourceEvents)
        #expect(sourceEvents.migrationStatuses == ["setup", "active", "device", "postcopy-active", "postcopy-paused",
                                                   "postcopy-recover-setup", "postcopy-paused",
                                                   "postcopy-recover-setup", "postcopy-recover", "postcopy-active", "completed"])
        #expect(capture.migrationStatuses == ["setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
                                              "postcopy-active", "completed"])
        let stats = try #require(destination.incomingMigration?.destination.withLock { $0 }?.postcopyStatistics)
        #expect(stats.pauses == 1)
        // Only what was missing came again: the pages placed before the break were not resent (a resent one is refused).
        #expect(stats.placedPages > placedAtPause)
        #expect(source.state == .postmigrate)
        if test.running {
            #expect(destination.state == .running)
            let beats = destination.progress.minimumHeartbeats
            try await kit.waitFor(seconds: 20) { destination.progress.minimumHeartbeats >= beats + 5 }
            #expect(destination.progress.verifyErrors == 0)
            destination.pause()
            #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        } else {
            #expect(destination.state == .paused)
            #expect(try kit.differingPages(source.memory, destination.memory) == [])
            #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        }
        relay.cut()
        source.quit()
        destination.quit()
    }
}
