import Foundation
import GuestMemory
import Synchronization
import Testing
@testable import Migration
import MigrationProtocol
import Transport

/// The source in postcopy against a scripted destination that asks for pages
/// it has no business asking for: every such request fails the migration with
/// its reason, and the source guest is never resumed once the switch may
/// have arrived (before it, it is).
@Suite struct PostcopyEngineTests {
    typealias Kit = SwitchoverRetryTests

    /// A destination that reads the forward stream until the `postcopy` frame (or
    /// `after` frames when the source never switches), sends `request`, and reads on until the stream ends.
    static func hostileDestination(_ listener: IncomingListener, after: Int?, request: ReturnMessage) {
        Thread {
            guard let channel = try? listener.accept() else { return }
            var reader = FrameReader(channel: channel)
            var payload: [UInt8] = [], tail: [UInt8] = []
            _ = try? reader.readStreamHeader()
            let writer = ReturnPathWriter(channel: channel)
            var count = 0, sent = false
            while let header = try? reader.next(into: &payload) {
                count += 1
                if reader.pendingTail > 0 { _ = try? reader.readTail(into: &tail) }
                if !sent && (header.kind == .postcopy || count == after) {
                    try? writer.send(request)
                    sent = true
                }
                if header.kind == .end { break }
            }
            channel.close()
        }.start()
    }

    /// A destination with a preempt channel that sends `message` back on that
    /// channel once the switch arrives on the main one, and reads on until the stream ends.
    static func hostilePreemptDestination(_ listener: IncomingListener, message: ReturnMessage) {
        Thread {
            guard let main = try? listener.accept() else { return }
            var reader = FrameReader(channel: main)
            var payload: [UInt8] = [], tail: [UInt8] = []
            _ = try? reader.readStreamHeader()
            var preempt: (any ByteChannel)?
            while let header = try? reader.next(into: &payload) {
                if reader.pendingTail > 0 { _ = try? reader.readTail(into: &tail) }
                if header.kind == .channels { preempt = try? listener.accept() }
                if header.kind == .postcopy, let preempt { try? ReturnPathWriter(channel: preempt).send(message) }
                if header.kind == .end { break }
            }
            preempt?.close()
            main.close()
        }.start()
    }

    /// Runs the source to its end; with `postcopy`, also what `query-migrate` said while it was paused (nil: it never paused).
    static func runSource(_ path: String, vm: Kit.RecordingVM, postcopy: Bool,
                          preempt: Bool = false) throws -> (engine: PrecopySource, paused: MigrationInfo?) {
        let block = try Kit.block(filled: true)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [block]), vcpuCount: 1)
        var capabilities = MigrationCapabilities()
        capabilities.postcopyRAM = true
        capabilities.postcopyPreempt = preempt
        let engine = PrecopySource(
            .init(opener: try URIChannelOpener(.unix(path: path)), configuration: configuration,
                  ram: RAMMigration(blocks: [block], tracker: Kit.OneShotDirtyLog(pages: 1024)),
                  devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], vm: vm),
            parameters: PrecopyEngineTests.fast, capabilities: capabilities, onStatus: { _ in })
        // Asked before the first round: the live phase switches at once.
        if postcopy { try engine.startPostcopy() }
        let done = DispatchSemaphore(value: 0)
        Thread { engine.run(); done.signal() }.start()
        // In postcopy a refused request pauses the migration (a recovery could go on); the
        // test then gives up on it, as a machine that quits does.
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline, !engine.status.isFinished, engine.status != .postcopyPaused { usleep(10_000) }
        let paused = engine.status == .postcopyPaused ? engine.info : nil
        engine.abandon()
        _ = done.wait(timeout: .now() + 20)
        return (engine, paused)
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let request: ReturnMessage
        let reason: String
        var testDescription: String { reason }
    }

    @Test("hostile page requests in postcopy pause the migration with their reason; the source guest never runs again",
          arguments: [
            Case(request: .pageRequest(block: 3, offset: 0, length: 4096), reason: "a page request for RAM block 3; there are 1"),
            Case(request: .pageRequest(block: 0, offset: 1 << 40, length: 4096),
                 reason: "a page request for 4096 bytes at 1099511627776 of RAM block 'pc.ram', which has 4194304"),
            Case(request: .pageRequest(block: 0, offset: 4096, length: 1 << 62),
                 reason: "a page request for 4611686018427387904 bytes at 4096 of RAM block 'pc.ram', which has 4194304"),
            Case(request: .pageRequest(block: 0, offset: 4096, length: 8192),
                 reason: "a page request for 8192 bytes at 4096 of RAM block 'pc.ram', which is not one whole 4096-byte page of it"),
          ])
    func hostileRequests(_ test: Case) throws {
        let path = "/tmp/ferry-pc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.hostileDestination(listener, after: nil, request: test.request)
        let vm = Kit.RecordingVM()
        let (engine, paused) = try Self.runSource(path, vm: vm, postcopy: true)
        #expect(paused?.status == .postcopyPaused)
        #expect(paused?.errorDescription?.contains(test.reason) == true, "\(paused?.errorDescription ?? "never paused")")
        #expect(paused?.errorDescription?.contains("the guest runs on the destination, where its newest memory is") == true)
        // Abandoned while paused (the machine quit): failed, and the guest still stopped.
        #expect(engine.info.status == .failed)
        #expect(engine.info.errorDescription?.contains("the machine quit while postcopy was paused") == true, "\(engine.info.errorDescription ?? "")")
        #expect(vm.events.withLock { $0 } == ["stop"], "stopped at the switch, and never resumed")
        #expect(engine.info.destinationMayRun)
    }

    @Test("on the preempt channel's way back, a hostile page request or any other message pauses postcopy with its reason",
          arguments: [
            Case(request: .pageRequest(block: 3, offset: 0, length: 4096), reason: "a page request for RAM block 3; there are 1"),
            Case(request: .pageRequest(block: 0, offset: 4096, length: 8192),
                 reason: "a page request for 8192 bytes at 4096 of RAM block 'pc.ram', which is not one whole 4096-byte page of it"),
            Case(request: .pageRequest(block: 0, offset: 100, length: 4096), reason: "page request at 100 for 4096 bytes is not 4096-byte aligned"),
            Case(request: .loaded, reason: "a loaded message on the postcopy preempt channel's way back, which carries page requests only"),
            Case(request: .shut, reason: "a shut message on the postcopy preempt channel's way back, which carries page requests only"),
          ])
    func hostileOnThePreemptChannel(_ test: Case) throws {
        let path = "/tmp/ferry-pc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.hostilePreemptDestination(listener, message: test.request)
        let vm = Kit.RecordingVM()
        let (engine, paused) = try Self.runSource(path, vm: vm, postcopy: true, preempt: true)
        #expect(paused?.status == .postcopyPaused)
        #expect(paused?.errorDescription?.contains(test.reason) == true, "\(paused?.errorDescription ?? "never paused")")
        #expect(engine.info.status == .failed)
        #expect(vm.events.withLock { $0 } == ["stop"], "stopped at the switch, and never resumed")
    }

    @Test("an unaligned page request is refused by the return path's decoder")
    func unalignedRequest() throws {
        // The encoder writes what it is given; the source's reader refuses it.
        let path = "/tmp/ferry-pc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.hostileDestination(listener, after: nil, request: .pageRequest(block: 0, offset: 100, length: 4096))
        let vm = Kit.RecordingVM()
        let (_, paused) = try Self.runSource(path, vm: vm, postcopy: true)
        #expect(paused?.errorDescription?.contains("page request at 100 for 4096 bytes is not 4096-byte aligned") == true,
                "\(paused?.errorDescription ?? "never paused")")
        #expect(vm.events.withLock { $0 } == ["stop"])
    }

    @Test("a page request before the switch fails the migration, and the source guest runs on")
    func requestBeforeTheSwitch() throws {
        let path = "/tmp/ferry-pc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.hostileDestination(listener, after: 1, request: .pageRequest(block: 0, offset: 0, length: 4096))
        let vm = Kit.RecordingVM()
        let (engine, _) = try Self.runSource(path, vm: vm, postcopy: false)
        #expect(engine.info.status == .failed)
        #expect(engine.info.errorDescription?.contains("a page request before the switch to postcopy") == true,
                "\(engine.info.errorDescription ?? "")")
        #expect(!vm.events.withLock { $0 }.contains("hold"))
        #expect(!engine.info.destinationMayRun)
    }

    /// Which 4 KiB pages (by index) each pages frame of a channel carried.
    final class Carried: Sendable {
        let main = Mutex<[Int]>([])
        let preempt = Mutex<[Int]>([])
    }

    /// Reads a channel's frames to its end, noting the pages; `afterFirstPostcopyPages` runs once, after
    /// the first pages frame that follows the switch.
    static func read(_ channel: any ByteChannel, layout: [MigrationConfiguration.Block], into pages: borrowing Mutex<[Int]>,
                     preempt: Bool = false, afterFirstPostcopyPages: () -> Void = {}, onPlan: (ChannelPlan) -> Void = { _ in }) {
        var reader = FrameReader(channel: channel)
        var payload: [UInt8] = [], tail: [UInt8] = []
        _ = try? reader.readStreamHeader()
        var switched = preempt, told = false     // the preempt channel carries nothing before the switch
        while let header = try? reader.next(into: &payload) {
            if reader.pendingTail > 0 { _ = try? reader.readTail(into: &tail) }
            switch header.kind {
            case .channels: if let plan = try? ChannelPlan(decoding: payload) { onPlan(plan) }
            case .postcopy: switched = true
            case .pages where switched:
                if let index = try? PageIndex(decoding: payload, tailLength: header.tailLength, layout: layout) {
                    pages.withLock { $0 += index.records.map { Int($0.offset) / 4096 } }
                }
                if !told {
                    told = true
                    afterFirstPostcopyPages()
                }
            case .end: return
            default: break
            }
        }
    }

    /// A destination on `listener` that notes the pages each channel carries, sends
    /// `requests` after the first pages that follow the switch (on the preempt
    /// channel's way back with `requestsOnPreempt`, as Ferry's destination does, else
    /// on the main return path, as an older one did), and once both channels
    /// ended says the load is done; the semaphore is signalled when it is.
    static func destination(_ listener: IncomingListener, layout: [MigrationConfiguration.Block], carried: Carried,
                            requests: [ReturnMessage], requestsOnPreempt: Bool = false) -> DispatchSemaphore {
        let finished = DispatchSemaphore(value: 0)
        Thread {
            defer { finished.signal() }
            guard let main = try? listener.accept() else { return }
            let answers = ReturnPathWriter(channel: main)
            let urgentAnswers = Mutex<ReturnPathWriter?>(nil)
            let preemptDone = DispatchSemaphore(value: 0)
            Self.read(main, layout: layout, into: carried.main, afterFirstPostcopyPages: {
                let way: ReturnPathWriter? = requestsOnPreempt ? urgentAnswers.withLock { $0 } : answers
                for request in requests { try? way?.send(request) }
            }, onPlan: { plan in
                guard plan.preempt, let preempt = try? listener.accept() else { return }
                urgentAnswers.withLock { $0 = ReturnPathWriter(channel: preempt) }
                Thread {
                    Self.read(preempt, layout: layout, into: carried.preempt, preempt: true)
                    preemptDone.signal()
                }.start()
            })
            preemptDone.wait()
            try? answers.send(.loaded)
            try? answers.send(.shut)
            main.close()
        }.start()
        return finished
    }

    /// A 4 MiB block of `backend`, every page filled, migrated in postcopy with
    /// preempt (over a Unix socket, the background paced at `pace` bytes a second)
    /// to `destination` that sends `requests`: the engine, once done, and what each channel carried.
    static func preemptRun(_ backend: MemoryBackend, requests: [ReturnMessage], requestsOnPreempt: Bool,
                           pace: UInt64) throws -> (PrecopySource, Carried) {
        let block = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: 4 << 20, backend: backend), placements: [])
        for page in stride(from: 0, to: 4 << 20, by: 4096) {
            block.mapping.storePage([UInt8](repeating: UInt8(truncatingIfNeeded: page >> 12 | 1), count: 4096), range: 0..<4096, at: page)
        }
        let layout = RAMMigration.layout(of: [block])
        let path = "/tmp/ferry-pc-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        let carried = Carried()
        let finished = Self.destination(listener, layout: layout, carried: carried, requests: requests, requestsOnPreempt: requestsOnPreempt)
        var capabilities = MigrationCapabilities()
        (capabilities.postcopyRAM, capabilities.postcopyPreempt) = (true, true)
        var parameters = PrecopyEngineTests.fast
        parameters.maxPostcopyBandwidth = pace
        let engine = PrecopySource(
            .init(opener: try URIChannelOpener(.unix(path: path)), configuration: MigrationConfiguration(blocks: layout, vcpuCount: 1),
                  ram: RAMMigration(blocks: [block], tracker: Kit.OneShotDirtyLog(pages: 1024)), devices: [], vm: Kit.RecordingVM()),
            parameters: parameters, capabilities: capabilities, onStatus: { _ in })
        try engine.startPostcopy()
        engine.run()
        finished.wait()
        return (engine, carried)
    }

    @Test("preempt on huge pages: a request inside the huge page the background is sending is dropped, the other goes whole on the preempt channel",
          arguments: [false, true])
    func dropRule(requestsOnPreempt: Bool) async throws {
        try await MultifdKernelTests.withHugePages(2) {
            // The background has sent 32 pages of huge page 0: a request inside it, and one for huge page 1
            // (2 s a huge page: the requests come while huge page 0 is under way).
            let (engine, carried) = try Self.preemptRun(.hugetlb, requests: [
                .pageRequest(block: 0, offset: 0, length: 2 << 20), .pageRequest(block: 0, offset: 2 << 20, length: 2 << 20)],
                requestsOnPreempt: requestsOnPreempt, pace: 1 << 20)
            #expect(engine.info.status == .completed, "\(engine.info.errorDescription ?? "")")
            #expect(engine.info.postcopyDroppedRequests == 1, "the request inside huge page 0 was dropped")
            #expect(engine.info.postcopyUrgentPages == 512)
            #expect(carried.preempt.withLock { $0 } == Array(512..<1024), "huge page 1, whole, on the preempt channel")
            #expect(carried.main.withLock { $0 }.sorted() == Array(0..<512), "huge page 0, whole, on the main channel only")
        }
    }

    @Test("preempt on 4 KiB pages: a page asked for after the background sent it goes again on the preempt channel (counted), one not yet sent goes there only")
    func resendOfAPageOnItsWay() throws {
        // After the background's first frame (from page 0): page 0, sent, and page 1000, not yet
        // (1 s in all: the requests come long before page 1000's turn).
        let (engine, carried) = try Self.preemptRun(.anon, requests: [
            .pageRequest(block: 0, offset: 0, length: 4096), .pageRequest(block: 0, offset: 1000 * 4096, length: 4096)],
            requestsOnPreempt: true, pace: 4 << 20)
        #expect(engine.info.status == .completed, "\(engine.info.errorDescription ?? "")")
        #expect(engine.info.postcopyUrgentPages == 2 && engine.info.postcopyResentPages == 1)
        #expect(carried.preempt.withLock { $0 }.sorted() == [0, 1000])
        let main = carried.main.withLock { $0 }
        #expect(main.sorted() == Array(0..<1000) + Array(1001..<1024), "every page once on the main channel, but 1000")
    }

    @Test("preempt on huge pages over TCP: while a requested huge page is unacknowledged the background yields, and every page arrives")
    func hugePageYield() async throws {
        try await MultifdKernelTests.withHugePages(4) {
            let block = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: 8 << 20, backend: .hugetlb), placements: [])
            for page in stride(from: 0, to: 8 << 20, by: 4096) {
                block.mapping.storePage([UInt8](repeating: UInt8(truncatingIfNeeded: page >> 12 | 1), count: 4096), range: 0..<4096, at: page)
            }
            let layout = RAMMigration.layout(of: [block])
            let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
            defer { listener.close() }
            let carried = Carried()
            // The background is on huge page 0: huge page 3 goes on the preempt channel.
            let finished = Self.destination(listener, layout: layout, carried: carried,
                                            requests: [.pageRequest(block: 0, offset: 6 << 20, length: 2 << 20)], requestsOnPreempt: true)
            var capabilities = MigrationCapabilities()
            (capabilities.postcopyRAM, capabilities.postcopyPreempt) = (true, true)
            var parameters = PrecopyEngineTests.fast
            // The preempt channel paced at it too: the requested huge page stays
            // unacknowledged for a quarter of a second.
            parameters.maxPostcopyBandwidth = 8 << 20
            let engine = PrecopySource(
                .init(opener: try URIChannelOpener(listener.address), configuration: MigrationConfiguration(blocks: layout, vcpuCount: 1),
                      ram: RAMMigration(blocks: [block], tracker: Kit.OneShotDirtyLog(pages: 2048)), devices: [], vm: Kit.RecordingVM()),
                parameters: parameters, capabilities: capabilities, onStatus: { _ in })
            try engine.startPostcopy()
            engine.run()
            finished.wait()
            #expect(engine.info.status == .completed, "\(engine.info.errorDescription ?? "")")
            #expect(engine.info.postcopyPacing == 8 << 20)
            #expect(engine.info.postcopyYields >= 1, "the background stepped aside for huge page 3")
            #expect(carried.preempt.withLock { $0 } == Array(1536..<2048), "huge page 3, whole, on the preempt channel")
            #expect(carried.main.withLock { $0 }.sorted() == Array(0..<1536), "the others on the main channel")
        }
    }

    @Test("postcopy sends huge pages the guest never touched as zero pages without reading them: they stay unallocated here")
    func untouchedHugePagesStayUntouched() async throws {
        try await MultifdKernelTests.withHugePages(4) {
            let block = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: 8 << 20, backend: .hugetlb), placements: [])
            // Huge pages 0 and 2 written; 1 and 3 never touched.
            for page in stride(from: 0, to: 8 << 20, by: 4096) where (page >> 21) % 2 == 0 {
                block.mapping.storePage([UInt8](repeating: UInt8(truncatingIfNeeded: page >> 12 | 1), count: 4096), range: 0..<4096, at: page)
            }
            let chunk = Int(RAMResidency.chunkBytes)
            #expect(block.mapping.residentChunks(chunkBytes: chunk).words == [0b0101])
            let layout = RAMMigration.layout(of: [block])
            let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
            defer { listener.close() }
            let carried = Carried()
            let finished = Self.destination(listener, layout: layout, carried: carried, requests: [])
            var capabilities = MigrationCapabilities()
            (capabilities.postcopyRAM, capabilities.postcopyPreempt) = (true, true)
            let engine = PrecopySource(
                .init(opener: try URIChannelOpener(listener.address), configuration: MigrationConfiguration(blocks: layout, vcpuCount: 1),
                      ram: RAMMigration(blocks: [block], tracker: Kit.OneShotDirtyLog(pages: 2048)), devices: [], vm: Kit.RecordingVM()),
                parameters: PrecopyEngineTests.fast, capabilities: capabilities, onStatus: { _ in })
            try engine.startPostcopy()
            engine.run()
            finished.wait()
            #expect(engine.info.status == .completed, "\(engine.info.errorDescription ?? "")")
            #expect(carried.main.withLock { $0 }.sorted() == Array(0..<2048), "every page sent after the switch")
            // Before, the background read huge pages 1 and 3 to test them for zero, and the kernel allocated them.
            #expect(block.mapping.residentChunks(chunkBytes: chunk).words == [0b0101])
        }
    }
}
