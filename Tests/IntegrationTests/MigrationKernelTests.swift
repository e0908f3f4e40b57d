import EmbeddedGuest
import Foundation
import GuestMemory
import KVM
import Migration
import MigrationProtocol
import QMP
import Synchronization
import Testing
import Transport
@testable import VMM

/// Precopy migration between two real machines in one process: memory page
/// for page, the guest's own verifier, heartbeats and timers after the move,
/// and every failure path leaving the source running.
@Suite(.serialized, .enabled(if: KVMSystem.isUsable, "needs /dev/kvm"))
struct MigrationKernelTests {
    final class Capture: Sendable {
        let events = Mutex<[String]>([])
        let failure = Mutex<String?>(nil)
        var migrationStatuses: [String] { events.withLock { $0 }.filter { $0.hasPrefix("MIGRATION:") }.map { String($0.dropFirst(10)) } }
    }

    func machine(memory: UInt64, cpus: Int = 2, workload: WorkloadSpec = .idle, incoming: Bool = false) throws -> (Machine, Capture) {
        let capture = Capture()
        let machine = try Machine(MachineConfiguration(memoryBytes: memory, cpus: cpus, boot: .embedded(workload)),
                                  incoming: incoming, serialOutput: { _ in },
                                  events: { event in
                                      let status = event.data?["status"].flatMap { if case .string(let s) = $0 { s } else { nil } }
                                      capture.events.withLock { $0.append(status.map { "\(event.name):\($0)" } ?? event.name) }
                                  })
        return (machine, capture)
    }

    static func socketPath() -> String { "/tmp/ferry-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    /// Waits until `condition` holds; after `seconds`, records an issue where the wait was asked for.
    func waitFor(seconds: Double = 60, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out waiting", sourceLocation: sourceLocation); return }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Guest-physical addresses of the pages whose bytes differ between two machines.
    func differingPages(_ a: GuestMemoryMap, _ b: GuestMemoryMap) throws -> [UInt64] {
        var differing: [UInt64] = []
        let chunk: UInt64 = 1 << 20
        for range in a.ramRanges {
            var address = range.start.rawValue
            while address < range.end.rawValue {
                let count = Int(min(chunk, range.end.rawValue - address))
                let left = try a.read(at: GuestAddress(address), count: count)
                let right = try b.read(at: GuestAddress(address), count: count)
                if left != right {
                    for page in stride(from: 0, to: count, by: 4096) where left[page..<page + 4096] != right[page..<page + 4096] {
                        differing.append(address + UInt64(page))
                    }
                }
                address += UInt64(count)
            }
        }
        return differing
    }

    func outgoingStatus(_ machine: Machine) -> MigrationStatus { machine.outgoingMigration?.status ?? .none }

    /// Source → destination over a Unix socket, destination held paused (-S) so its memory can be compared.
    func migrate(_ source: Machine, to destination: Machine, capture: Capture, uri: String? = nil) async throws {
        let uri = uri ?? "unix:" + Self.socketPath()
        try destination.startIncoming(from: uri, autostart: false, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        #expect(source.execute(.migrate(uri: uri)) == .success(.object([:])))
        try await waitFor { outgoingStatus(source).isFinished && outgoingStatus(source) != .none }
        try await waitFor { [.completed, .failed].contains(destination.incomingMigration?.status.withLock({ $0 })) }
        try await waitForFinalEvent(capture)
    }

    /// The MIGRATION event follows the status (seen on CI: the events read between
    /// them, on either side): waits until the capture's last status is a final one.
    /// A capture that keeps no statuses has none to wait for.
    func waitForFinalEvent(_ capture: Capture) async throws {
        try await waitFor {
            let statuses = capture.migrationStatuses
            return statuses.isEmpty || ["completed", "failed", "cancelled"].contains(statuses.last ?? "")
        }
    }

    /// The third workload is still touching fresh memory while it moves: at the start
    /// about 48 MiB of its 768 MiB are resident, and the chunks that are not are sent as
    /// zero without being read (their dirty log re-armed at setup), so each page it writes
    /// there later must come through the dirty log.
    @Test("1 GiB guest, idle and dirtying: every page arrives, the guest runs on and verifies clean",
          arguments: [WorkloadSpec.idle, WorkloadSpec(dirtyRate: .max, workingSet: 256 << 20),
                      WorkloadSpec(dirtyRate: .bytesPerSecond(96 << 20), workingSet: 768 << 20)])
    func migratesWholeGuest(workload: WorkloadSpec) async throws {
        let (source, sourceEvents) = try machine(memory: 1 << 30, workload: workload)
        let (destination, destinationEvents) = try machine(memory: 1 << 30, incoming: true)
        source.start()
        destination.start()
        try await waitFor { source.progress.minimumHeartbeats >= 5 }
        if workload.workingSet == 768 << 20 {
            let resident = source.memory.blocks[0].mapping.residentChunks(chunkBytes: 2 << 20).count
            #expect(resident < 192, "most of the working set is still untouched as the move starts: \(resident) chunks of 2 MiB resident")
        }
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(8 << 30)]))
        // A max-rate guest over 256 MiB dirties about three quarters of what a debug build
        // sends on two shared cores: whether it converges unthrottled is the scheduler's
        // luck (seen: 113 passes in a minute, 170 MiB left after each), so it is
        // throttled as a user would (auto-converge).
        _ = source.execute(.migrateSetCapabilities([.init(capability: "auto-converge", state: workload != .idle)]))
        try await migrate(source, to: destination, capture: destinationEvents)
        let info = try #require(source.outgoingMigration)
        #expect(info.status == .completed, """
            \(info.errorDescription ?? "") after \(info.ram.dirtySyncCount) syncs, \(info.transferredBytes >> 20) MiB sent, \
            dirtying \(info.ram.dirtyPagesRate) pages/s, \(info.ram.remainingPages) pages left, throttle \(info.cpuThrottlePercentage ?? 0) %
            """)
        #expect(destinationEvents.failure.withLock { $0 } == nil)
        #expect(source.state == .postmigrate)
        #expect(destination.state == .paused, "-S keeps the destination paused after the load")
        #expect(info.downtime != nil && info.ram.normalPages > 0 && info.ram.dirtySyncCount >= 2)
        try await waitForFinalEvent(sourceEvents)
        #expect(sourceEvents.migrationStatuses == ["setup", "active", "device", "completed"])
        #expect(destinationEvents.migrationStatuses == ["setup", "active", "completed"])

        // Page for page, the destination holds the source's final memory.
        #expect(try differingPages(source.memory, destination.memory) == [])
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)

        // The guest continues where it stopped: sequences go on, every vCPU's timer ticks.
        let before = source.progress
        #expect(destination.execute(.cont) == .success(.object([:])))
        // Until every vCPU beat 5 times and ticked 10 times more (a loaded host once gave 9
        // over the 5 beats); a timer left unrestored never gets there, and the wait fails.
        try await waitFor {
            let now = destination.progress
            return now.minimumHeartbeats >= 5 && (0..<2).allSatisfy { cpu in
                (now.cpus[cpu].last?.timerTicks ?? 0) >= (before.cpus[cpu].last?.timerTicks ?? .max - 10) + 10
            }
        }
        destination.pause()
        let after = destination.progress
        for cpu in 0..<2 {
            let last = try #require(before.cpus[cpu].last), now = try #require(after.cpus[cpu].last)
            #expect(now.sequence >= last.sequence + 5, "vCPU \(cpu) heartbeats continue their sequence")
            // 100 Hz nominal, about 50 ticks over 5 heartbeats; a busy host coalesces ticks
            // that find the previous one still pending (seen: 20 on CI), and a timer
            // left unrestored gives none.
            #expect(now.timerTicks >= last.timerTicks + 10, "vCPU \(cpu) timer interrupts keep arriving")
        }
        #expect(after.verifyErrors == 0)
        #expect(PageVerifier.verify(destination.memory).failureCount == 0)
        source.quit()
        destination.quit()
    }

    @Test("a stopped guest migrates and stays stopped on the destination")
    func stoppedGuestStaysStopped() async throws {
        let (source, _) = try machine(memory: 64 << 20, cpus: 1, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(4 << 20), workingSet: 8 << 20))
        let (destination, capture) = try machine(memory: 64 << 20, cpus: 1, incoming: true)
        source.start()
        destination.start()
        try await waitFor { source.progress.minimumHeartbeats >= 3 }
        source.pause()
        let uri = "unix:" + Self.socketPath()
        try destination.startIncoming(from: uri, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        _ = source.execute(.migrate(uri: uri))
        try await waitFor { outgoingStatus(source).isFinished && outgoingStatus(source) != .none }
        try await waitFor { [.completed, .failed].contains(destination.incomingMigration?.status.withLock({ $0 })) }
        #expect(outgoingStatus(source) == .completed)
        #expect(destination.state == .paused, "the source was stopped, so the destination does not start it")
        #expect(try differingPages(source.memory, destination.memory) == [])
        let beats = source.progress.cpus[0].last?.sequence ?? 0
        #expect(destination.execute(.cont) == .success(.object([:])))
        try await waitFor { (destination.progress.cpus[0].last?.sequence ?? 0) > beats + 2 }
        #expect(destination.progress.verifyErrors == 0)
        source.quit()
        destination.quit()
    }

    @Test("quit while waiting for the source: the listener goes (socket file removed, connects refused) and the guest never runs")
    func quitBeforeTheSourceConnects() async throws {
        let (destination, capture) = try machine(memory: 64 << 20, cpus: 1, incoming: true)
        destination.start()
        let path = Self.socketPath()
        try destination.startIncoming(from: "unix:" + path, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        #expect(access(path, F_OK) == 0)
        destination.quit()
        await destination.waitUntilFinished()
        // Before, the listener stayed: its file, a thread in accept, and a source that came later was loaded.
        try await waitFor(seconds: 10) { access(path, F_OK) != 0 }
        #expect(throws: ChannelError.self) { _ = try Transport.connect(.unix(path: path)) }
        try await waitFor(seconds: 10) { destination.incomingMigration?.status.withLock({ $0 }) == .failed }
        #expect(destination.state == .shutdown)
    }

    @Test("file: save and restore round trip")
    func fileRoundTrip() async throws {
        let path = "/tmp/ferry-test-\(getpid()).state"
        defer { unlink(path) }
        let (source, _) = try machine(memory: 256 << 20, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(16 << 20), workingSet: 32 << 20))
        source.start()
        try await waitFor { source.progress.minimumHeartbeats >= 3 }
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(8 << 30)]))
        #expect(source.execute(.migrate(uri: "file:" + path)) == .success(.object([:])))
        try await waitFor { outgoingStatus(source).isFinished && outgoingStatus(source) != .none }
        #expect(outgoingStatus(source) == .completed)
        #expect(source.state == .postmigrate)

        let (restored, capture) = try machine(memory: 256 << 20, incoming: true)
        restored.start(paused: true)
        try await migrate(source: nil, restored, capture: capture, uri: "file:" + path)
        #expect(restored.state == .paused)
        let differing = try differingPages(source.memory, restored.memory)
        #expect(differing.isEmpty, "\(differing.count) pages differ, first \(differing.prefix(4))")
        #expect(restored.execute(.cont) == .success(.object([:])))
        let beats = source.progress.cpus[0].last?.sequence ?? 0
        try await waitFor { (restored.progress.cpus[0].last?.sequence ?? 0) > beats + 3 }
        #expect(restored.progress.verifyErrors == 0)
        source.quit()
        restored.quit()
    }

    func migrate(source: Machine?, _ destination: Machine, capture: Capture, uri: String) async throws {
        try destination.startIncoming(from: uri, autostart: false, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        try await waitFor { [.completed, .failed].contains(destination.incomingMigration?.status.withLock({ $0 })) }
        #expect(capture.failure.withLock { $0 } == nil)
    }

    @Test("migrate_cancel mid-way leaves the source running intact; a second migration then succeeds")
    func cancelThenRetry() async throws {
        let (source, events) = try machine(memory: 512 << 20, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(16 << 20), workingSet: 64 << 20))
        let (first, firstCapture) = try machine(memory: 512 << 20, incoming: true)
        source.start()
        first.start()
        try await waitFor { source.progress.pagesWritten > 16384 }   // the whole working set written once
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(32 << 20)]))
        let uri = "unix:" + Self.socketPath()
        try first.startIncoming(from: uri, autostart: false, onFailure: { reason in firstCapture.failure.withLock { $0 = reason } })
        _ = source.execute(.migrate(uri: uri))
        try await waitFor { (source.outgoingMigration?.ram.normalPages ?? 0) > 1000 }
        #expect(source.execute(.migrateCancel) == .success(.object([:])))
        try await waitFor { outgoingStatus(source).isFinished }
        #expect(outgoingStatus(source) == .cancelled)
        #expect(events.migrationStatuses.suffix(2) == ["cancelling", "cancelled"])
        #expect(source.state == .running)
        try await waitFor { firstCapture.failure.withLock { $0 } != nil }
        #expect(firstCapture.failure.withLock { $0 }?.contains("truncated") == true)

        let beats = source.progress.heartbeats
        try await waitFor { source.progress.heartbeats >= beats + 4 }
        source.pause()
        #expect(PageVerifier.verify(source.memory).failureCount == 0)
        #expect(source.progress.verifyErrors == 0)
        try source.resume()

        let (second, secondCapture) = try machine(memory: 512 << 20, incoming: true)
        second.start()
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(8 << 30)]))
        try await migrate(source, to: second, capture: secondCapture)
        #expect(outgoingStatus(source) == .completed)
        #expect(try differingPages(source.memory, second.memory) == [])
        source.quit()
        first.quit()
        second.quit()
    }

    @Test("a destination that dies mid-stream fails the migration; the source runs on")
    func destinationDiesMidStream() async throws {
        let (source, _) = try machine(memory: 256 << 20, workload: WorkloadSpec(dirtyRate: .bytesPerSecond(8 << 20), workingSet: 64 << 20))
        source.start()
        try await waitFor { source.progress.minimumHeartbeats >= 3 }
        let path = Self.socketPath()
        let listener = try Transport.listen(.unix(path: path))
        let reader = Thread {
            // Read 512 KiB of the stream, then vanish.
            guard let channel = try? listener.accept() else { return }
            var buffer = [UInt8](repeating: 0, count: 512 << 10)
            try? channel.readExactly(buffer.count, into: &buffer, at: 0)
            channel.close()
        }
        reader.start()
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(64 << 20)]))
        _ = source.execute(.migrate(uri: "unix:" + path))
        try await waitFor { outgoingStatus(source).isFinished && outgoingStatus(source) != .none }
        #expect(outgoingStatus(source) == .failed)
        #expect(source.outgoingMigration?.errorDescription?.isEmpty == false)
        #expect(source.state == .running)
        let beats = source.progress.heartbeats
        try await waitFor { source.progress.heartbeats >= beats + 4 }
        source.pause()
        #expect(PageVerifier.verify(source.memory).failureCount == 0)
        source.quit()
    }

    @Test("a configuration mismatch fails on the destination before a page is written, and the source says why")
    func configurationMismatch() async throws {
        let (source, _) = try machine(memory: 256 << 20)
        let (destination, capture) = try machine(memory: 128 << 20, incoming: true)
        source.start()
        destination.start()
        try await waitFor { source.progress.minimumHeartbeats >= 2 }
        let uri = "unix:" + Self.socketPath()
        try destination.startIncoming(from: uri, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        _ = source.execute(.migrate(uri: uri))
        try await waitFor { outgoingStatus(source).isFinished && outgoingStatus(source) != .none }
        try await waitFor { capture.failure.withLock { $0 } != nil }
        let failure = try #require(capture.failure.withLock { $0 })
        #expect(failure.contains("configuration mismatch: RAM block 'pc.ram' is 268435456 bytes on the source, 134217728 here"), "\(failure)")
        #expect(outgoingStatus(source) == .failed)
        #expect(source.outgoingMigration?.errorDescription?.contains("configuration mismatch") == true)
        #expect(source.state == .running)
        #expect(destination.memory.digest() == GuestMemoryMap.zeroDigest(of: destination.memory), "nothing was written")
        source.quit()
        destination.quit()
    }

    /// Feeds `bytes` to a fresh destination and returns its failure.
    func feedDestination(_ bytes: [UInt8]) async throws -> (String?, Machine) {
        let (destination, capture) = try machine(memory: 64 << 20, cpus: 1, incoming: true)
        destination.start()
        let path = Self.socketPath()
        try destination.startIncoming(from: "unix:" + path, onFailure: { reason in capture.failure.withLock { $0 = reason } })
        let channel = try Transport.connect(.unix(path: path))
        try? channel.write(bytes)
        channel.shutdown()
        try await waitFor { capture.failure.withLock { $0 } != nil }
        return (capture.failure.withLock { $0 }, destination)
    }

    /// A stream of these frames, numbered as a source numbers them, with the end frame if `end`.
    /// The channel plan (no multifd) follows the configuration unless the frames
    /// have one; `tails` are the `pages` frames' tails, in order.
    func encodeStream(_ frames: [(FrameKind, [UInt8])], tails: [[UInt8]] = [], end: Bool = false) -> [UInt8] {
        var encoder = FrameEncoder()
        var frames = frames
        if !frames.contains(where: { $0.0 == .channels }), let at = frames.firstIndex(where: { $0.0 == .configuration }) {
            frames.insert((.channels, ChannelPlan(multifd: 0).encode()), at: at + 1)
        }
        var tails = tails[...]
        return StreamHeader.encode() + frames.flatMap { kind, payload in
            encoder.frame(kind, payload: payload, tail: kind == .pages ? tails.popFirst() ?? [] : [])
        } + (end ? encoder.end() : [])
    }

    func hostileStream(_ destinationLayout: MigrationConfiguration, pages batch: PageBatchWriter) -> [UInt8] {
        var batch = batch
        return encodeStream([(.configuration, destinationLayout.encode()), (.pages, batch.payload())], tails: [batch.tail])
    }

    @Test("truncated, corrupted and out-of-RAM streams each fail the destination with a clear error")
    func hostileStreams() async throws {
        let layout = MigrationConfiguration(blocks: [.init(name: "pc.ram", byteCount: 64 << 20, pageSize: 4096)], vcpuCount: 1)
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: 8 << 20, page: ArraySlice(repeating: 0xab, count: 4096))
        let good = hostileStream(layout, pages: batch)

        // Truncated: the stream stops inside the page frame's index, then inside its pages.
        let (truncated, first) = try await feedDestination(Array(good.prefix(good.count - 4096 - 12)))
        // The offset is how much arrived, not where the frame's payload began.
        #expect(truncated?.contains("stream truncated: the stream ended after \(good.count - 4096 - 12) bytes") == true, "\(truncated ?? "")")
        first.quit()
        let (inPages, eleventh) = try await feedDestination(Array(good.prefix(good.count - 100)))
        #expect(inPages?.contains("stream truncated: the stream ended inside the pages of a frame") == true, "\(inPages ?? "")")
        eleventh.quit()

        // Corrupted: one byte of the page index flipped; the frame checksum catches it.
        var corrupt = good
        corrupt[corrupt.count - 4096 - 8 - 20] ^= 0x01
        let (corrupted, second) = try await feedDestination(corrupt)
        #expect(corrupted?.contains("checksum mismatch") == true, "\(corrupted ?? "")")
        second.quit()

        // A well-formed record that points past the end of RAM.
        var outside = PageBatchWriter()
        outside.append(block: 0, offset: 64 << 20, page: ArraySlice(repeating: 0xcd, count: 4096))
        let (beyond, third) = try await feedDestination(hostileStream(layout, pages: outside))
        #expect(beyond?.contains("lies outside RAM block 'pc.ram'") == true, "\(beyond ?? "")")
        #expect(third.memory.digest() == GuestMemoryMap.zeroDigest(of: third.memory))
        third.quit()

        // Sections: a name nobody owns, and a vCPU section whose parts are garbage.
        let unknown = encodeStream([(.configuration, layout.encode()),
                                    (.section, StateSection(name: "bogus", version: 1, state: [1, 2, 3]).encode())])
        let (unknownSection, fifth) = try await feedDestination(unknown)
        #expect(unknownSection?.contains("unknown section 'bogus'") == true, "\(unknownSection ?? "")")
        fifth.quit()
        let badCPU = encodeStream([(.configuration, layout.encode()),
                                   (.section, StateSection(name: "cpu/0", version: 1, state: [8, 1, 0xff, 0xff, 0xff, 0x7f]).encode())])
        let (cpuSection, sixth) = try await feedDestination(badCPU)
        #expect(cpuSection?.contains("state part 1 is 2147483647 bytes, expected 144") == true, "\(cpuSection ?? "")")
        sixth.quit()
        let early = encodeStream([(.configuration, layout.encode())], end: true)
        let (missing, seventh) = try await feedDestination(early)
        #expect(missing?.contains("the stream ended without section") == true, "\(missing ?? "")")
        seventh.quit()

        // A residency frame after pages, and one sized for another RAM.
        let late = encodeStream([(.configuration, layout.encode()), (.pages, batch.payload()),
                                 (.residency, RAMResidency(words: [[1]]).encode())], tails: [batch.tail])
        let (lateResidency, eighth) = try await feedDestination(late)
        #expect(lateResidency?.contains("a residency frame after pages") == true, "\(lateResidency ?? "")")
        eighth.quit()
        let wrongSize = encodeStream([(.configuration, layout.encode()), (.residency, RAMResidency(words: [[1, 0]]).encode())])
        let (badResidency, ninth) = try await feedDestination(wrongSize)
        #expect(badResidency?.contains("residency of block 'pc.ram' has 2 words, expected 1") == true, "\(badResidency ?? "")")
        ninth.quit()

        // A whole, valid page frame dropped from a stream: refused where the gap is, nothing after it applied.
        var encoder = FrameEncoder()
        var later = PageBatchWriter()
        later.append(block: 0, offset: 12 << 20, page: ArraySlice(repeating: 0xee, count: 4096))
        let frames = [encoder.frame(.configuration, payload: layout.encode()), encoder.frame(.channels, payload: ChannelPlan(multifd: 0).encode()),
                      encoder.frame(.pages, payload: batch.payload(), tail: batch.tail),
                      encoder.frame(.pages, payload: later.payload(), tail: later.tail)]
        let (gap, tenth) = try await feedDestination(StreamHeader.encode() + frames[0] + frames[1] + frames[3] + encoder.end())
        #expect(gap?.contains("frame out of sequence: a frame of kind 2 numbered 3 where frame 2 was due") == true, "\(gap ?? "")")
        #expect(tenth.memory.digest() == GuestMemoryMap.zeroDigest(of: tenth.memory), "the frame after the gap was not applied")
        tenth.quit()

        // Not a migration stream at all.
        let (garbage, fourth) = try await feedDestination(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        #expect(garbage?.contains("bad magic") == true, "\(garbage ?? "")")
        fourth.quit()
    }
}

extension GuestMemoryMap {
    /// The digest of an all-zero map of the same layout.
    static func zeroDigest(of map: GuestMemoryMap) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        var zeroPage: UInt64 = 0xcbf2_9ce4_8422_2325
        for _ in 0..<512 { zeroPage = (zeroPage ^ 0) &* 0x100_0000_01b3 }
        for range in map.ramRanges {
            for _ in 0..<(range.byteCount / 4096) { hash = (hash ^ zeroPage) &* 0x100_0000_01b3 }
        }
        return hash
    }
}
