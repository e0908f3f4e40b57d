import Foundation
import Synchronization
import Testing
@testable import GuestMemory
@testable import Migration
import MigrationProtocol
import Transport

/// The source engine's own rules, with the real engine, real RAM and a real
/// socket, and a VM that records what it was asked: downtime counted from the
/// stop request, a throttle that never goes down, errors that are reported.
@Suite struct PrecopyEngineTests {
    typealias Kit = SwitchoverRetryTests

    /// A VM whose vCPUs take `stopDelay` to park (a throttled vCPU sleeping out its share).
    final class SlowStopVM: MigrationVMControl {
        let inner = Kit.RecordingVM()
        let stopDelay: Duration
        init(stopDelay: Duration) { self.stopDelay = stopDelay }
        func stopForSwitchover() -> Bool {
            sleepUntil(.now + stopDelay)
            return inner.stopForSwitchover()
        }
        func migrationCompleted() { inner.migrationCompleted() }
        func resumeAfterFailedSwitchover(wasRunning: Bool) { inner.resumeAfterFailedSwitchover(wasRunning: wasRunning) }
        func holdAfterUncertainSwitchover() { inner.holdAfterUncertainSwitchover() }
        func setThrottle(percent: Int) { inner.setThrottle(percent: percent) }
    }

    static var fast: MigrationParameters {
        var parameters = MigrationParameters()
        parameters.maxBandwidth = 1 << 40
        return parameters
    }

    @Test("downtime counts from the stop request, not from when the vCPUs parked")
    func downtimeFromStopRequest() throws {
        let vm = SlowStopVM(stopDelay: .milliseconds(250))
        let run = try Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm.inner, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0)], parameters: Self.fast)
        #expect(run.info.status == .completed, "\(run.info.errorDescription ?? "")")
        #expect((run.info.downtime ?? 0) >= 250, "downtime \(run.info.downtime ?? 0) ms leaves out the 250 ms the stop took")
    }

    @Test("auto-converge never lowers the throttle in one migration, across called-off switchovers")
    func throttleNeverDecreases() throws {
        let vm = Kit.RecordingVM()
        var parameters = Self.fast
        parameters.maxBandwidth = 64 << 20      // 6.4 MiB a window against 4 MiB dirtied each sync: never converges alone
        parameters.downtimeLimit = 1
        parameters.cpuThrottleInitial = 20
        parameters.cpuThrottleIncrement = 10
        parameters.maxCPUThrottle = 99
        var capabilities = MigrationCapabilities()
        capabilities.autoConverge = true
        // A device too large once stopped, twice: two switchovers are called off and iteration goes on.
        let device = Kit.StopSizedDevice(vm: vm, largeStops: 2)
        // Calms down only once the throttle is high, and again higher after each resume.
        let run = try Kit.runMigration(
            vm: vm, tracker: ThrottleGatedLog(pages: 1024, vm: vm, until: 60), sourceDevices: [device],
            destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0)], parameters: parameters, capabilities: capabilities)
        #expect(run.info.status == .completed, "\(run.info.errorDescription ?? "")")
        let throttles = vm.throttles.withLock { $0 }.filter { $0 > 0 }
        #expect(throttles.count >= 3, "\(throttles)")
        #expect(throttles == throttles.sorted(), "the throttle went down: \(throttles)")
        #expect(run.info.switchoverRetries == 2)
        // The throttle is off once the migration ends, and query-migrate says so (it went on reporting the last level).
        #expect(vm.throttles.withLock { $0 }.last == 0)
        #expect(run.info.cpuThrottlePercentage == 0)
    }

    /// Dirties every page at each sync while the guest runs and the throttle is
    /// under `until`; after each called-off switchover it dirties again.
    final class ThrottleGatedLog: DirtyPageSource {
        let pages: Int
        let vm: Kit.RecordingVM
        let until: Int
        init(pages: Int, vm: Kit.RecordingVM, until: Int) { (self.pages, self.vm, self.until) = (pages, vm, until) }
        func startTracking() throws {}
        func collectDirtyPages() throws -> [String: DirtyBitmap] {
            let throttle = vm.throttles.withLock { $0.last } ?? 0
            let resumes = vm.events.withLock { $0.filter { $0 == "resume" }.count }
            // Each round after a resume needs the throttle 10 points higher before it calms down.
            let busy = !vm.stopped.load(ordering: .relaxed) && throttle < until + 10 * resumes
            return ["pc.ram": DirtyBitmap(pageCount: pages, allSet: busy)]
        }
        func stopTracking() throws {}
    }

    final class StuckTrackingLog: DirtyPageSource {
        let inner = Kit.OneShotDirtyLog(pages: 1024)
        func startTracking() throws {}
        func collectDirtyPages() throws -> [String: DirtyBitmap] { try inner.collectDirtyPages() }
        func stopTracking() throws { throw MigrationError.state("KVM_SET_USER_MEMORY_REGION failed: EBUSY") }
    }

    @Test("dirty tracking that will not stop is reported, not swallowed")
    func stopTrackingFailureReported() throws {
        let vm = Kit.RecordingVM()
        let run = try Kit.runMigration(vm: vm, tracker: StuckTrackingLog(),
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0)], parameters: Self.fast)
        #expect(run.info.status == .completed)
        #expect(run.info.errorDescription?.contains("cannot stop dirty tracking: KVM_SET_USER_MEMORY_REGION failed: EBUSY") == true,
                "\(run.info.errorDescription ?? "nothing reported")")
    }

    /// Starts half way (the first slot logging, the next refused), and records the stop.
    final class HalfStartedLog: DirtyPageSource {
        let stops = Atomic<Int>(0)
        func startTracking() throws { throw MigrationError.state("KVM_SET_USER_MEMORY_REGION failed: EEXIST") }
        func collectDirtyPages() throws -> [String: DirtyBitmap] { [:] }
        func stopTracking() throws { stops.add(1, ordering: .relaxed) }
    }

    @Test("dirty tracking that failed to start is stopped: what it turned on is not left on")
    func failedStartIsStopped() throws {
        let vm = Kit.RecordingVM()
        let tracker = HalfStartedLog()
        let run = try Kit.runMigration(vm: vm, tracker: tracker,
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0)], parameters: Self.fast)
        #expect(run.info.status == .failed)
        #expect(run.info.errorDescription?.contains("cannot start dirty tracking") == true, "\(run.info.errorDescription ?? "")")
        // Before, cleanup took tracking for never started and left the first slots logging.
        #expect(tracker.stops.load(ordering: .relaxed) == 1)
    }

    @Test("two pieces of state claiming one section name fail the migration with a reason")
    func duplicateSectionNames() throws {
        let vm = Kit.RecordingVM()
        let run = try Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0), Kit.StopSizedDevice(vm: nil, largeStops: 0)],
                                       parameters: Self.fast)
        #expect(run.info.status == .failed)
        #expect(run.info.errorDescription?.contains("two pieces of state claim section 'stop-sized'") == true, "\(run.info.errorDescription ?? "")")
        if case .failure(let error)? = run.destination {
            #expect(error.description == "two pieces of state claim section 'stop-sized'")
        } else { Issue.record("the destination loaded with two owners of one section") }
    }

    /// State only the destination has: a section name and what loading it does.
    final class LoadOnlyDevice: Migratable {
        let sectionName: String
        let sectionVersion: UInt16 = 1
        let onLoad: @Sendable (StateSection) throws(MigrationError) -> Void
        init(_ sectionName: String, onLoad: @escaping @Sendable (StateSection) throws(MigrationError) -> Void = { _ in }) {
            (self.sectionName, self.onLoad) = (sectionName, onLoad)
        }
        func setup() throws(MigrationError) {}
        func pendingEstimate() -> UInt64 { 0 }
        func pendingExact() throws(MigrationError) -> UInt64 { 0 }
        func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool { true }
        func complete(_ output: StreamWriter) throws(MigrationError) {}
        func load(_ section: StateSection) throws(MigrationError) { try onLoad(section) }
        func cleanup() {}
    }

    @Test("past the point of no return, a destination that refuses the stream: the source resumes")
    func refusalAfterEndResumes() throws {
        let vm = Kit.RecordingVM()
        let run = try Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0), LoadOnlyDevice("missing")],
                                       parameters: Self.fast)
        #expect(run.info.status == .failed)
        #expect(run.info.errorDescription == "the destination failed: unexpected frame: the stream ended without section 'missing'",
                "\(run.info.errorDescription ?? "")")
        #expect(vm.events.withLock { $0 } == ["stop", "resume"], "the destination said it will not run the guest")
    }

    @Test("past the point of no return, the destination's answer lost: the source stays paused, never both running")
    func lostAnswerHolds() throws {
        let source = try Kit.block(filled: true)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let path = "/tmp/ferry-hold-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        let sawEnd = Mutex(false)
        let destination = Thread {
            // Reads the whole stream, end included, then vanishes without answering.
            guard let channel = try? listener.accept() else { return }
            var reader = FrameReader(channel: channel)
            var payload: [UInt8] = []
            _ = try? reader.readStreamHeader()
            var tail: [UInt8] = []
            while let header = try? reader.next(into: &payload) {
                if header.kind == .end { sawEnd.withLock { $0 = true }; break }
                if reader.pendingTail > 0 { _ = try? reader.readTail(into: &tail) }
            }
            channel.close()
        }
        destination.start()
        let vm = Kit.RecordingVM()
        let engine = PrecopySource(
            .init(channel: try Transport.connect(.unix(path: path)), configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: Kit.OneShotDirtyLog(pages: 1024)),
                  devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], vm: vm),
            parameters: Self.fast, capabilities: MigrationCapabilities(), onStatus: { _ in })
        engine.run()
        #expect(sawEnd.withLock { $0 })
        #expect(engine.info.status == .failed)
        #expect(engine.info.errorDescription?.contains("the destination's answer was lost after the switchover") == true,
                "\(engine.info.errorDescription ?? "")")
        #expect(vm.events.withLock { $0 } == ["stop", "hold"], "the source must not resume a guest the destination may run")
        #expect(engine.info.destinationMayRun)
        engine.cancel()
        #expect(engine.info.status == .failed, "a cancel after the end changes nothing")
    }

    /// A destination device slow to load (a big device state): the source has
    /// sent `end` long before the destination answers.
    static func slowLoadingDevice() -> LoadOnlyDevice {
        let inner = Kit.StopSizedDevice(vm: nil, largeStops: 0)
        return LoadOnlyDevice(inner.sectionName) { section throws(MigrationError) in
            sleepUntil(.now + .milliseconds(400))
            try inner.load(section)
        }
    }

    @Test("migrate_cancel after the end went out, while the destination still loads: completed, never two guests")
    func cancelWhileTheDestinationLoads() throws {
        let vm = Kit.RecordingVM()
        let run = Mutex<Kit.Run?>(nil)
        let engine = Mutex<PrecopySource?>(nil)
        Thread {
            let result = try? Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                               sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                               destinationDevices: [Self.slowLoadingDevice()], parameters: Self.fast,
                                               started: { source in engine.withLock { $0 = source } })
            run.withLock { $0 = result }
        }.start()
        // The source stopped its guest and sent everything, `end` included; the destination
        // is still loading, and will run the guest once it has.
        while !vm.events.withLock({ $0.contains("stop") }) { usleep(1000) }
        usleep(150_000)
        engine.withLock { $0 }?.cancel()
        while run.withLock({ $0 }) == nil { usleep(1000) }
        let result = try #require(run.withLock { $0 })
        #expect(result.destination.map { if case .success = $0 { true } else { false } } == true, "the destination loaded: its guest runs")
        #expect(result.info.status == .completed, "\(result.info.status): \(result.info.errorDescription ?? "")")
        #expect(vm.events.withLock { $0 } == ["stop", "completed"], "the source resumed a guest the destination runs")
    }

    /// A channel that swallows everything (a link as fast as memory).
    final class NullChannel: ByteChannel {
        func write(_ bytes: [UInt8]) throws(ChannelError) {}
        func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int { 0 }
        func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { false }
        var hasReturnPath: Bool { false }
        func shutdown() {}
        func close() {}
    }

    @Test("max-bandwidth holds on average: 1 MiB frames at 64 MiB/s send 64 MiB a second, not 10 % more")
    func rateLimitDoesNotOvershoot() throws {
        let writer = StreamWriter(channel: NullChannel())
        writer.setRateLimit(64 << 20)
        let frame = [UInt8](repeating: 1, count: 1 << 20)
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(2) {
            try writer.send(.pages, payload: frame)
            if writer.isRateLimited { writer.waitForBudget() }
        }
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = Double(writer.bytesWritten) / seconds
        #expect(rate <= Double(64 << 20) * 1.05, "sent \(Int(rate / 1_048_576)) MiB/s at a 64 MiB/s limit")
        #expect(rate >= Double(64 << 20) * 0.85, "sent only \(Int(rate / 1_048_576)) MiB/s")
    }
}

/// The engine's blocking reader is the tested decoder: the same frames, the
/// same refusals, whatever sizes the channel's reads come in.
@Suite struct FrameReaderTests {
    /// A stream in memory that hands out at most `chunk` bytes a read.
    final class ChunkedChannel: ByteChannel {
        let bytes: [UInt8]
        let chunk: Int
        let position = Mutex(0)
        init(_ bytes: [UInt8], chunk: Int) { (self.bytes, self.chunk) = (bytes, chunk) }
        func write(_ bytes: [UInt8]) throws(ChannelError) {}
        func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
            let start = position.withLock { $0 }
            let n = min(count, chunk, bytes.count - start)
            for i in 0..<n { buffer[offset + i] = bytes[start + i] }
            position.withLock { $0 += n }
            return n
        }
        func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { true }
        var hasReturnPath: Bool { false }
        func shutdown() {}
        func close() {}
    }

    static func stream() -> (bytes: [UInt8], payloads: [[UInt8]]) {
        var encoder = FrameEncoder()
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: 4096, page: ArraySlice((0..<4096).map { UInt8(truncatingIfNeeded: $0) }))
        let payloads = [[UInt8](repeating: 7, count: 33), batch.payload(), StateSection(name: "x", version: 1, state: [1, 2]).encode()]
        let kinds: [FrameKind] = [.configuration, .pages, .section]
        let bytes = StreamHeader.encode() + zip(kinds, payloads).flatMap { encoder.frame($0, payload: $1, tail: $0 == .pages ? batch.tail : []) }
            + encoder.end()
        return (bytes, payloads)
    }

    func readAll(_ bytes: [UInt8], chunk: Int) throws(MigrationError) -> [[UInt8]] {
        var reader = FrameReader(channel: ChunkedChannel(bytes, chunk: chunk))
        _ = try reader.readStreamHeader()
        var payloads: [[UInt8]] = []
        var payload: [UInt8] = []
        var tail: [UInt8] = []
        while try reader.next(into: &payload).kind != .end {
            payloads.append(payload)
            if reader.pendingTail > 0 { try reader.readTail(into: &tail) }
        }
        return payloads
    }

    @Test("frames read whole or a byte at a time are the same; a cut stream says how much arrived")
    func splitReads() throws {
        let (bytes, payloads) = Self.stream()
        for chunk in [1, 3, 16, 17, 4095, 4096, 1 << 20] {
            #expect(try readAll(bytes, chunk: chunk) == payloads, "reads of \(chunk)")
        }
        #expect(throws: MigrationError.stream(.truncated("the stream ended after \(bytes.count - 5) bytes, 3 of the 8 bytes of the checksum of a frame of kind 4"))) {
            _ = try readAll(Array(bytes.dropLast(5)), chunk: 7)
        }
    }
}
