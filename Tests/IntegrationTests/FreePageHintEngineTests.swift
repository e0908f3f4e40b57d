import GuestMemory
import Migration
import Synchronization
import Testing

/// The engine's half of free page hints, without a device: a hint clears only
/// bits that syncs up to the one its round followed had set, the dirty count
/// stays exact, and the hints are told of every sync and of the end.
@Suite struct FreePageHintEngineTests {
    /// Hands out the scripted collections in order (then nothing dirty).
    final class ScriptedLog: DirtyPageSource {
        let script: Mutex<[[Int]]>
        let pages: Int
        init(pages: Int, script: [[Int]]) {
            self.pages = pages
            self.script = Mutex(script)
        }
        func startTracking() throws {}
        func stopTracking() throws {}
        func collectDirtyPages() throws -> [String: DirtyBitmap] {
            var bitmap = DirtyBitmap(pageCount: pages)
            for page in script.withLock({ $0.isEmpty ? [] : $0.removeFirst() }) { bitmap[page] = true }
            return ["pc.ram": bitmap]
        }
    }

    final class RecordingHints: FreePageHints {
        let calls = Mutex<[String]>([])
        func willSync() { calls.withLock { $0.append("stop") } }
        func didSync(epoch: UInt64, ram: RAMMigration) { calls.withLock { $0.append("start \(epoch)") } }
        func finish() { calls.withLock { $0.append("done") } }
    }

    @Test func hintsClearOnlyWhatTheirSyncSetAndCountExactly() throws {
        let pages = 1024
        let block = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: UInt64(pages * 4096), backend: .anon), placements: [])
        let hints = RecordingHints()
        let ram = RAMMigration(blocks: [block], tracker: ScriptedLog(pages: pages, script: [Array(0..<pages), [5, 700]]),
                               freePageHints: hints)
        try ram.setup()                                         // sync 1: every page
        #expect(hints.calls.withLock { $0 } == ["stop", "start 1"])
        #expect(ram.dropFreePages(block: 0, pages: 0..<100, epoch: 1) == 100)
        #expect(ram.dropFreePages(block: 0, pages: 50..<150, epoch: 1) == 50, "only bits still set count")
        #expect(ram.dropFreePages(block: 0, pages: 1000..<5000, epoch: 1) == 24, "clipped at the block's end")
        #expect(ram.dropFreePages(block: 3, pages: 0..<10, epoch: 1) == 0, "no such block")
        #expect(ram.stats.freePageHintPages == 174)
        #expect(ram.pendingEstimate() == UInt64(pages - 174) * 4096)

        // Page 5 (hinted already) and 700 are written again; sync 2 holds them.
        try ram.sync()
        #expect(ram.dropFreePages(block: 0, pages: 0..<1024, epoch: 1) == 0, "a round from before sync 2 clears nothing")
        #expect(ram.pendingEstimate() == UInt64(pages - 174 + 1) * 4096, "page 5 is dirty again")
        #expect(ram.dropFreePages(block: 0, pages: 0..<8, epoch: 2) == 1)

        try ram.sync(guestStopped: true)
        #expect(hints.calls.withLock { $0 } == ["stop", "start 1", "stop", "start 2", "stop", "done"])
        try ram.cleanup()
        #expect(hints.calls.withLock { $0 }.last == "done", "the end is told again on cleanup (failure, cancel)")
        #expect(ram.dropFreePages(block: 0, pages: 0..<1024, epoch: 3) == 0, "nothing after cleanup")
    }

    /// Tells one shared log when it re-arms tracking, and (as `FreePageHints`) when a round starts.
    final class OrderLog: DirtyPageSource, FreePageHints {
        let events = Mutex<[String]>([])
        func startTracking() throws {}
        func stopTracking() throws {}
        func collectDirtyPages() throws -> [String: DirtyBitmap] {
            var bitmap = DirtyBitmap(pageCount: 512)
            for page in 0..<512 { bitmap[page] = true }
            return ["pc.ram": bitmap]
        }
        func prepareToRead(block: String, pages: Range<Int>) throws { events.withLock { $0.append("arm") } }
        func willSync() {}
        func didSync(epoch: UInt64, ram: RAMMigration) { events.withLock { $0.append("start \(epoch)") } }
        func finish() {}
    }

    @Test("the first round of hints starts only once tracking is re-armed everywhere: a page hinted before its re-arm and written then would be lost")
    func hintsStartAfterTheFirstReArm() throws {
        let block = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: 512 * 4096, backend: .anon), placements: [])
        let log = OrderLog()
        let ram = RAMMigration(blocks: [block], tracker: log, freePageHints: log)
        try ram.setup()
        #expect(log.events.withLock { $0 } == ["arm", "start 1"])
        try ram.cleanup()
    }
}
