import EmbeddedGuest
import Foundation
import GuestMemory
import KVM
import Migration
import Testing
@testable import VMM

/// KVM's dirty log on a real guest: every page the guest rewrote must be
/// reported, and nothing is reported while it is paused.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct DirtyLogKernelTests {
    let workingSet: UInt64 = 16 << 20

    func generations(_ memory: GuestMemoryMap) throws -> [UInt64] {
        let pages = Int(workingSet) / 4096
        return try (0..<pages).map { index in
            try memory.readUInt64(at: GuestAddress(GuestABI.workBase + UInt64(index) * 4096 + 16))
        }
    }

    /// A 128 MiB guest rewriting its working set at 24 MiB/s, running 300 ms, then tracked.
    func trackedDirtyingMachine(cpus: Int) async throws -> (Machine, any DirtyPageSource) {
        let machine = try Machine(MachineConfiguration(memoryBytes: 128 << 20, cpus: cpus,
                                                       boot: .embedded(WorkloadSpec(dirtyRate: .bytesPerSecond(24 << 20), workingSet: workingSet))),
                                  serialOutput: { _ in })
        let source = machine.makeDirtyPageSource()
        machine.start()
        try await Task.sleep(for: .milliseconds(300))
        try source.startTracking()
        return (machine, source)
    }

    @Test("no guest write escapes the dirty log")
    func everyRewrittenPageIsDirty() async throws {
        let (machine, source) = try await trackedDirtyingMachine(cpus: 2)
        let first = try source.collectDirtyPages()
        #expect(first["pc.ram"]?.count == Int(128 << 20) / 4096, "initially every page is dirty")

        for _ in 0..<3 {
            machine.pause()
            _ = try source.collectDirtyPages()           // drain
            let quiet = try source.collectDirtyPages()
            #expect(quiet["pc.ram"]?.isEmpty == true, "nothing is dirtied while paused")
            let before = try generations(machine.memory)
            try machine.resume()
            try await Task.sleep(for: .milliseconds(250))
            machine.pause()
            let dirty = try source.collectDirtyPages()["pc.ram"]!
            let after = try generations(machine.memory)
            let firstWorkPage = Int(GuestABI.workBase / 4096)
            let rewritten = (0..<before.count).filter { before[$0] != after[$0] }
            #expect(rewritten.count > 500, "the guest rewrote pages")
            let missed = rewritten.filter { !dirty[firstWorkPage + $0] }
            #expect(missed.isEmpty, "pages rewritten but not logged: \(missed.prefix(5))")
            // Outside the working set only the guest's own data pages (stacks, per-CPU, heartbeats) may be dirty.
            let stray = dirty.setPages.filter { $0 >= firstWorkPage + before.count }
            #expect(stray.isEmpty)
            try machine.resume()
        }
        try source.stopTracking()
        machine.quit()
        #expect(machine.progress.verifyErrors == 0)
    }

    @Test("pages the VMM itself writes are reported with the guest's")
    func vmmWritesAreTracked() throws {
        let machine = try Machine(MachineConfiguration(memoryBytes: 64 << 20, cpus: 1, boot: .embedded(.idle)), serialOutput: { _ in })
        machine.start(paused: true)                             // vCPU threads parked: the guest never runs
        let source = machine.makeDirtyPageSource()
        try source.startTracking()
        _ = try source.collectDirtyPages()                      // every page, once
        try source.prepareToRead(block: "pc.ram", pages: 0..<(64 << 20) / 4096)      // as before reading them
        #expect(try source.collectDirtyPages()["pc.ram"]?.isEmpty == true, "the guest has not run")
        // A write that straddles two pages marks both.
        try machine.memory.write([UInt8](repeating: 0x5a, count: 16), at: GuestAddress((40 << 20) + 4096 - 8))
        let dirty = try #require(try source.collectDirtyPages()["pc.ram"])
        #expect(dirty.setPages == [(40 << 20) / 4096, (40 << 20) / 4096 + 1])
        try source.stopTracking()
        try machine.memory.write([1], at: GuestAddress(41 << 20))
        try source.startTracking()
        #expect(try source.collectDirtyPages()["pc.ram"]?.count == (64 << 20) / 4096, "a new round starts with every page")
        try source.stopTracking()
        machine.quit()
    }

    @Test("a peek (a stopped guest's last sync) ends no interval: the next collection reports its pages again, the VMM's writes too")
    func peekKeepsThePages() async throws {
        let (machine, source) = try await trackedDirtyingMachine(cpus: 1)
        machine.pause()
        _ = try source.collectDirtyPages()                      // every page, once
        try source.prepareToRead(block: "pc.ram", pages: 0..<(128 << 20) / 4096)     // as before reading them
        try machine.resume()
        try await Task.sleep(for: .milliseconds(250))
        machine.pause()
        try machine.memory.write([0x5a], at: GuestAddress(100 << 20))
        let peeked = try #require(try source.peekDirtyPages()["pc.ram"])
        #expect(peeked.count > 500, "the guest rewrote pages")
        #expect(peeked[(100 << 20) / 4096], "the VMM's write is reported")
        #expect(try source.peekDirtyPages()["pc.ram"] == peeked, "a second peek sees the same pages")
        let collected = try #require(try source.collectDirtyPages()["pc.ram"])
        #expect(collected == peeked, "the collection after a peek reports every peeked page again")
        #expect(try source.collectDirtyPages()["pc.ram"]?.isEmpty == true, "collected, they are gone")
        try source.stopTracking()
        machine.quit()
        #expect(machine.progress.verifyErrors == 0)
    }

    @Test("the first collection re-arms nothing: prepareToRead re-arms the pages about to be read, the next collection the others, without reporting them again")
    func rearmWhenRead() async throws {
        let (machine, source) = try await trackedDirtyingMachine(cpus: 1)
        machine.pause()
        let pages = Int(128 << 20) / 4096
        #expect(try source.collectDirtyPages()["pc.ram"]?.count == pages, "the first collection: every page")
        // The first 16 MiB are read now: the guest's data pages and the lower half of its working set.
        let working = Int(GuestABI.workBase / 4096)..<Int(GuestABI.workBase + workingSet) / 4096
        let readNow = 0..<working.lowerBound + working.count / 2
        try source.prepareToRead(block: "pc.ram", pages: readNow)

        /// Runs the guest once through its working set (by its heartbeats: at 24 MiB/s about
        /// 0.7 s; a fixed 250 ms was, on a loaded host, sometimes too little to reach both
        /// halves); returns the working-set pages it rewrote (block page numbers) and the next collection.
        func run() async throws -> (rewritten: Set<Int>, dirty: DirtyBitmap) {
            let before = try generations(machine.memory)
            let written = machine.progress.pagesWritten
            try machine.resume()
            let deadline = ContinuousClock.now + .seconds(20)
            while machine.progress.pagesWritten < written + UInt64(working.count), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            machine.pause()
            let after = try generations(machine.memory)
            let dirty = try #require(try source.collectDirtyPages()["pc.ram"])
            return (Set((0..<before.count).filter { before[$0] != after[$0] }.map { working.lowerBound + $0 }), dirty)
        }

        let (rewritten, dirty) = try await run()
        #expect(rewritten.filter(readNow.contains).count > 200 && rewritten.filter { !readNow.contains($0) }.count > 200,
                "the guest rewrote pages on both sides")
        #expect(rewritten.filter(readNow.contains).allSatisfy { dirty[$0] }, "no rewritten page escapes where it was re-armed")
        #expect(!(readNow.upperBound..<pages).contains { dirty[$0] },
                "pages never prepared are not reported again, rewritten or not: the first report stands")
        let quiet = readNow.filter { dirty[$0] && !rewritten.contains($0) }
        #expect(quiet.count < 64, "re-armed pages the guest left alone are not reported (bar its own data pages): \(quiet.count)")

        // That collection re-armed the rest: from now on every write anywhere is reported, and only those.
        let (again, next) = try await run()
        #expect(again.filter { !readNow.contains($0) }.count > 200, "the guest rewrote pages outside the first 16 MiB")
        #expect(again.allSatisfy { next[$0] }, "no rewritten page escapes")
        #expect(next.count < again.count + 64, "pages the guest left alone are not reported: \(next.count) for \(again.count) rewritten")
        #expect(try source.collectDirtyPages()["pc.ram"]?.isEmpty == true, "nothing while paused")
        try source.stopTracking()
        machine.quit()
        #expect(machine.progress.verifyErrors == 0)
    }

    @Test("a re-arm clears exactly the pages named, whatever their alignment")
    func rearmIsExact() throws {
        let machine = try Machine(MachineConfiguration(memoryBytes: 64 << 20, cpus: 1, boot: .embedded(.idle)), serialOutput: { _ in })
        machine.start(paused: true)
        let source = machine.makeDirtyPageSource()
        try source.startTracking()
        let slot = try #require(machine.memorySlots.first).slot
        let pages = (64 << 20) / 4096
        var cleared = Set<Int>()
        for range in [100..<300, 64..<128, 1000..<1001, 4095..<4160, pages - 70..<pages + 10] {
            try machine.vm.rearmDirtyLog(slot: slot, pages: range)
            cleared.formUnion(range.clamped(to: 0..<pages))
            let log = try machine.vm.collectDirtyLog(slot: slot, clearing: false)
            #expect(log.setPages == (0..<pages).filter { !cleared.contains($0) }, "after re-arming \(range)")
        }
        try source.stopTracking()
        machine.quit()
    }
}
