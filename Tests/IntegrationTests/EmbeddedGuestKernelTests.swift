import EmbeddedGuest
import Foundation
import GuestMemory
import KVM
import QMP
import Synchronization
import Testing
@testable import VMM

/// Real KVM, real guest: these prove the micro-VMM works.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct EmbeddedGuestKernelTests {
    /// Collects serial output and events from a machine under test.
    final class Capture: Sendable {
        let serial = Mutex<[UInt8]>([])
        let events = Mutex<[String]>([])
        var text: String { String(decoding: serial.withLock { $0 }, as: UTF8.self) }
    }

    func makeMachine(cpus: Int, workload: WorkloadSpec, memory: UInt64 = 256 << 20) throws -> (Machine, Capture) {
        let capture = Capture()
        let machine = try Machine(MachineConfiguration(memoryBytes: memory, cpus: cpus, boot: .embedded(workload)),
                                  serialOutput: { bytes in capture.serial.withLock { $0 += bytes } },
                                  events: { event in capture.events.withLock { $0.append(event.name) } })
        return (machine, capture)
    }

    /// Waits (bounded) until `condition` holds.
    func waitFor(seconds: Double = 10, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out waiting"); return }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test("the guest beats and verifies its memory with zero failures", arguments: [1, 4])
    func runsAndVerifies(cpus: Int) async throws {
        let (machine, capture) = try makeMachine(cpus: cpus, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(32 << 20), workingSet: 64 << 20))
        machine.start()
        // Every vCPU must beat several times and rewrite pages (a second pass verifies the first).
        try await waitFor { machine.progress.minimumHeartbeats >= 12 }
        machine.pause()
        let progress = machine.progress
        #expect(progress.cpus.allSatisfy { $0.heartbeats >= 12 })
        #expect(progress.pagesWritten > 1000)
        #expect(progress.cpus.allSatisfy { ($0.last?.timerTicks ?? 0) > 50 }, "the LAPIC timer ticks on every vCPU")
        #expect(progress.verifyErrors == 0)
        #expect(progress.panicVector == nil)
        let report = PageVerifier.verify(machine.memory)
        #expect(report.failureCount == 0)
        #expect(report.pagesWritten > 1000)
        #expect(capture.text.contains("HB 1 t=0 pages=0 err=0"))
        #expect(capture.text.contains("ferry-guest: cpus=\(cpus)"))
        machine.quit()
    }

    /// A guest that has dirtied over 500 pages of an 8 MiB working set, paused, and verified clean.
    func pausedCleanGuest(cpus: Int) async throws -> Machine {
        let (machine, _) = try makeMachine(cpus: cpus, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(16 << 20), workingSet: 8 << 20))
        machine.start()
        try await waitFor { machine.progress.pagesWritten > 500 }
        machine.pause()
        let clean = PageVerifier.verify(machine.memory)
        #expect(clean.failureCount == 0, "\(clean)")
        #expect(clean.checkedAgainstBitmap)
        #expect(clean.pagesWritten > 400)
        return machine
    }

    @Test("the host-side verifier finds a deliberately corrupted page")
    func verifierFindsCorruption() async throws {
        let machine = try await pausedCleanGuest(cpus: 1)
        // Flip one byte in the body of a written page, and one in an untouched page.
        let written = GuestAddress(GuestABI.workBase + 10 * 4096)
        let untouched = GuestAddress(200 << 20)
        var byte = try machine.memory.read(at: written.advanced(by: 1000)!, count: 1)
        byte[0] ^= 0x40
        try machine.memory.write(byte, at: written.advanced(by: 1000)!)
        try machine.memory.write([1], at: untouched.advanced(by: 77)!)
        let report = PageVerifier.verify(machine.memory)
        #expect(report.failures == [written, untouched])
        machine.quit()
    }

    @Test("the host-side verifier reports a written page that was zeroed (lost) as failed")
    func verifierFindsLostPage() async throws {
        let machine = try await pausedCleanGuest(cpus: 2)
        // vCPU 1's stripe starts at 4 MiB + 4 MiB: its first pages are written by now.
        let lost = GuestAddress(GuestABI.workBase + (4 << 20) + 3 * 4096)
        #expect(try machine.memory.withPageWords(at: lost) { PageVerifier.check(words: $0, index: lost.rawValue / 4096) } == .valid)
        try machine.memory.write([UInt8](repeating: 0, count: 4096), at: lost)
        let report = PageVerifier.verify(machine.memory)
        #expect(report.failures == [lost], "\(report)")
        #expect(report.failureCount == 1)
        #expect(report.pagesLost == 1)
        machine.quit()
    }

    @Test("a page caught half written by a pause is set aside, never reported as corrupt")
    func pausedMidWrite() async throws {
        let (machine, _) = try makeMachine(cpus: 2, workload: WorkloadSpec(dirtyRate: .max, workingSet: 8 << 20), memory: 32 << 20)
        machine.start()
        try await waitFor { machine.progress.pagesWritten > 4096 }      // past the first pass
        var inFlight = 0
        for _ in 0..<20 {
            machine.pause()
            let report = PageVerifier.verify(machine.memory)
            #expect(report.failureCount == 0, "\(report)")
            inFlight += report.pagesInFlight
            try machine.resume()
            try await Task.sleep(for: .milliseconds(15))
        }
        #expect(inFlight > 0, "at full rate some pause lands inside a page write")
        machine.quit()
        #expect(machine.progress.verifyErrors == 0)
    }

    @Test("the guest's own verifier reports a page corrupted under it")
    func guestVerifierFindsCorruption() async throws {
        let (machine, _) = try makeMachine(cpus: 1, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(64 << 20), workingSet: 4 << 20))
        machine.start()
        try await waitFor { machine.progress.pagesWritten > 1100 }     // past the first pass over 1024 pages
        machine.pause()
        let target = GuestAddress(GuestABI.workBase + 512 * 4096)
        try machine.memory.write([0xff, 0xff], at: target.advanced(by: 2048)!)
        try machine.resume()
        try await waitFor { machine.progress.verifyErrors > 0 }
        #expect(machine.progress.verifyErrors == 1)
        #expect(machine.progress.cpus[0].last?.firstErrorPage == target.rawValue / 4096)
        machine.quit()
    }

    @Test("stop freezes heartbeats and memory; cont resumes them")
    func stopAndCont() async throws {
        let (machine, capture) = try makeMachine(cpus: 2, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(32 << 20), workingSet: 32 << 20))
        machine.start()
        try await waitFor { machine.progress.minimumHeartbeats >= 3 }
        #expect(machine.execute(.stop) == .success(.object([:])))
        #expect(machine.state == .paused)
        let beats = machine.progress.heartbeats
        let digest = machine.memory.digest()
        try await Task.sleep(for: .milliseconds(400))
        #expect(machine.progress.heartbeats == beats, "no heartbeat while paused")
        #expect(machine.memory.digest() == digest, "memory unchanged while paused")
        #expect(machine.execute(.queryStatus) == .success(["status": "paused", "running": false, "singlestep": false]))
        #expect(machine.execute(.cont) == .success(.object([:])))
        try await waitFor { machine.progress.heartbeats >= beats + 4 }
        machine.pause()
        #expect(machine.memory.digest() != digest, "the guest wrote memory again after cont")
        #expect(machine.progress.verifyErrors == 0)
        machine.quit()
        #expect(capture.events.withLock { $0 } == ["STOP", "RESUME", "STOP", "SHUTDOWN"])
    }

    @Test("a 16 GiB guest starts without touching its memory and beats")
    func largeGuestStarts() async throws {
        let (machine, _) = try makeMachine(cpus: 1, workload: .idle, memory: 16 << 30)
        #expect(machine.memory.ramRanges.map(\.end.rawValue) == [3 << 30, (4 + 13) << 30])
        machine.start()
        try await waitFor { machine.progress.heartbeats >= 2 }
        #expect(machine.progress.verifyErrors == 0)
        #expect(machine.progress.panicVector == nil)
        machine.quit()
    }
}
