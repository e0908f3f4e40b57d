import Foundation
import Synchronization
import Testing
@testable import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// The engine's estimate/exact split at switchover, with a device whose size
/// is only known once the guest is stopped (as QEMU's VFIO): when its exact
/// size breaks the downtime limit, the guest resumes and iteration goes on, at
/// most three times.  Real engine, real RAM, a real socket; the "VM" records
/// what the engine asked of it.
@Suite struct SwitchoverRetryTests {
    /// Stopping and resuming, as the engine asks it.
    final class RecordingVM: MigrationVMControl {
        let events = Mutex<[String]>([])
        let stopped = Atomic<Bool>(false)
        func stopForSwitchover() -> Bool {
            stopped.store(true, ordering: .relaxed)
            events.withLock { $0.append("stop") }
            return true
        }
        func migrationCompleted() { events.withLock { $0.append("completed") } }
        func resumeAfterFailedSwitchover(wasRunning: Bool) {
            stopped.store(false, ordering: .relaxed)
            events.withLock { $0.append(wasRunning ? "resume" : "stay stopped") }
        }
        func holdAfterUncertainSwitchover() { events.withLock { $0.append("hold") } }
        let throttles = Mutex<[Int]>([])
        func setThrottle(percent: Int) { throttles.withLock { $0.append(percent) } }
    }

    /// A device that looks small while the guest runs and, stopped, reports
    /// far more than any link sends within the limit for its first `largeStops` asks.
    final class StopSizedDevice: Migratable {
        let sectionName = "stop-sized"
        let sectionVersion: UInt16 = 1
        let vm: RecordingVM?
        let largeStops: Int
        let stoppedAsks = Mutex(0)
        let loaded = Mutex<[UInt8]?>(nil)
        static let state: [UInt8] = Array(0..<200)

        init(vm: RecordingVM?, largeStops: Int) {
            self.vm = vm
            self.largeStops = largeStops
        }
        func setup() throws(MigrationError) {}
        func pendingEstimate() -> UInt64 { UInt64(Self.state.count) }
        func pendingExact() throws(MigrationError) -> UInt64 {
            guard vm?.stopped.load(ordering: .relaxed) == true else { return pendingEstimate() }
            let ask = stoppedAsks.withLock { n in defer { n += 1 }; return n }
            return ask < largeStops ? 1 << 40 : pendingEstimate()
        }
        func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool { true }
        func complete(_ output: StreamWriter) throws(MigrationError) {
            try output.send(.section, payload: StateSection(name: sectionName, version: sectionVersion, state: Self.state).encode())
        }
        func load(_ section: StateSection) throws(MigrationError) { loaded.withLock { $0 = Array(section.state) } }
        func cleanup() {}
    }

    /// Every page dirty at the first collection, none after: the "guest" does not write.
    final class OneShotDirtyLog: DirtyPageSource {
        let pages: Int
        let first = Atomic<Bool>(true)
        init(pages: Int) { self.pages = pages }
        func startTracking() throws {}
        func collectDirtyPages() throws -> [String: DirtyBitmap] {
            ["pc.ram": DirtyBitmap(pageCount: pages, allSet: first.exchange(false, ordering: .relaxed))]
        }
        func stopTracking() throws {}
    }

    static func block(filled: Bool) throws -> RAMBlock {
        let mapping = try HostMapping(byteCount: 4 << 20, backend: .anon)
        if filled {
            for page in stride(from: 0, to: 4 << 20, by: 8192) {      // every other page has data
                let bytes = (0..<4096).map { UInt8(truncatingIfNeeded: $0 ^ page >> 12) }
                bytes.withUnsafeBytes { mapping.storeBytes($0, at: page) }
            }
        }
        return RAMBlock(name: "pc.ram", mapping: mapping, placements: [])
    }

    func migrate(largeStops: Int) throws -> (MigrationInfo, [String], StopSizedDevice, RAMBlock, RAMBlock) {
        let vm = RecordingVM()
        let loadedDevice = StopSizedDevice(vm: nil, largeStops: 0)
        var parameters = MigrationParameters()
        parameters.maxBandwidth = 1 << 40
        let run = try Self.runMigration(vm: vm, tracker: OneShotDirtyLog(pages: 1024),
                                        sourceDevices: [StopSizedDevice(vm: vm, largeStops: largeStops)],
                                        destinationDevices: [loadedDevice], parameters: parameters)
        if case .failure(let error)? = run.destination { Issue.record("destination: \(error)") }
        return (run.info, vm.events.withLock { $0 }, loadedDevice, run.source, run.target)
    }

    struct Run {
        let info: MigrationInfo
        let source: RAMBlock, target: RAMBlock
        let destination: Result<Void, MigrationError>?
    }

    /// The real engine, over a real Unix socket, from a 4 MiB block half full of
    /// data into an empty one; `started` is handed the engine as it starts.
    static func runMigration(vm: any MigrationVMControl, tracker: any DirtyPageSource, sourceDevices: [any Migratable],
                             destinationDevices: [any Migratable], parameters: MigrationParameters,
                             capabilities: MigrationCapabilities = MigrationCapabilities(),
                             started: (PrecopySource) -> Void = { _ in },
                             onStatus: @escaping @Sendable (MigrationStatus) -> Void = { _ in }) throws -> Run {
        let source = try Self.block(filled: true), target = try Self.block(filled: false)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let path = "/tmp/ferry-retry-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        let destination = DestinationThread(listener: listener, configuration: configuration, blocks: [target], devices: destinationDevices)
        let engine = PrecopySource(
            .init(channel: try Transport.connect(.unix(path: path)), configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: tracker), devices: sourceDevices, vm: vm),
            parameters: parameters, capabilities: capabilities, onStatus: onStatus)
        started(engine)
        engine.run()
        destination.wait(recordingFailure: false)
        return Run(info: engine.info, source: source, target: target, destination: destination.result.withLock { $0 })
    }

    static func sameBytes(_ a: RAMBlock, _ b: RAMBlock) -> Bool {
        a.mapping.withBytes(at: 0, count: a.mapping.byteCount) { x in
            b.mapping.withBytes(at: 0, count: b.mapping.byteCount) { y in x.elementsEqual(y) }
        }
    }

    @Test("a device too large once stopped: the guest resumes, iteration goes on, and the next stop completes")
    func resumesThenCompletes() throws {
        let (info, events, device, source, target) = try migrate(largeStops: 2)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        #expect(info.switchoverRetries == 2)
        #expect(events == ["stop", "resume", "stop", "resume", "stop", "completed"])
        #expect(device.loaded.withLock { $0 } == StopSizedDevice.state)
        #expect(Self.sameBytes(source, target), "every page arrived")
    }

    @Test("a device that never fits: after three retries the switchover goes ahead rather than stall")
    func retriesAreBounded() throws {
        let (info, events, device, source, target) = try migrate(largeStops: 100)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        #expect(info.switchoverRetries == 3)
        #expect(events == ["stop", "resume", "stop", "resume", "stop", "resume", "stop", "completed"])
        #expect(device.loaded.withLock { $0 } == StopSizedDevice.state)
        #expect(Self.sameBytes(source, target))
    }

    @Test("a first pass done before the first bandwidth window closes switches over at once (it synced every millisecond until the window closed)")
    func quickPassNeedsNoWindow() throws {
        let (info, events, device, source, target) = try migrate(largeStops: 0)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")
        // The setup's sync, the finished pass's, and the stop's: with a threshold of 0
        // until the first window closed, the device state never fitted it and the loop
        // synced each millisecond for 100 ms (58 syncs in a stopped incremental save).
        #expect(info.ram.dirtySyncCount <= 4, "\(info.ram.dirtySyncCount) syncs")
        #expect(events == ["stop", "completed"])
        #expect(device.loaded.withLock { $0 } == StopSizedDevice.state)
        #expect(Self.sameBytes(source, target))
    }

    /// Estimates far more while the guest runs than its exact size (200 bytes).
    final class OverEstimatingDevice: Migratable {
        let sectionName = "stop-sized"
        let sectionVersion: UInt16 = 1
        func setup() throws(MigrationError) {}
        func pendingEstimate() -> UInt64 { 1 << 20 }
        func pendingExact() throws(MigrationError) -> UInt64 { UInt64(StopSizedDevice.state.count) }
        func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool { true }
        func complete(_ output: StreamWriter) throws(MigrationError) {
            try output.send(.section, payload: StateSection(name: sectionName, version: sectionVersion, state: StopSizedDevice.state).encode())
        }
        func load(_ section: StateSection) throws(MigrationError) {}
        func cleanup() {}
    }

    @Test("a pass with every page out syncs even while the devices' estimate is over the threshold (it spun without syncing)")
    func completePassSyncs() throws {
        let vm = RecordingVM()
        let loadedDevice = StopSizedDevice(vm: nil, largeStops: 0)
        var parameters = MigrationParameters()
        parameters.maxBandwidth = 64 << 20           // the threshold at 10 ms: 640 KiB, under the 1 MiB estimate
        parameters.downtimeLimit = 10
        let run = try Self.runMigration(vm: vm, tracker: OneShotDirtyLog(pages: 1024), sourceDevices: [OverEstimatingDevice()],
                                        destinationDevices: [loadedDevice], parameters: parameters) { engine in
            // Bounded: a loop that never syncs is cancelled, and the test fails instead of hanging.
            Thread {
                Thread.sleep(forTimeInterval: 20)
                engine.cancel()
            }.start()
        }
        #expect(run.info.status == .completed, "\(run.info.errorDescription ?? "")")
        #expect(loadedDevice.loaded.withLock { $0 } == StopSizedDevice.state)
        #expect(Self.sameBytes(run.source, run.target))
    }
}
