import Foundation
@testable import Migration
import MigrationProtocol
import Synchronization
import Testing

/// MIGRATION events follow the status changes, whichever thread makes them.
@Suite(.serialized) struct MigrationEventOrderTests {
    typealias Kit = SwitchoverRetryTests

    static var fast: MigrationParameters { PrecopyEngineTests.fast }

    @Test("migrate_cancel before the migration thread starts: setup, cancelling, cancelled")
    func cancelBeforeRun() throws {
        let vm = Kit.RecordingVM()
        let events = Mutex<[MigrationStatus]>([])
        let run = try Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                       sourceDevices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)],
                                       destinationDevices: [Kit.StopSizedDevice(vm: nil, largeStops: 0)], parameters: Self.fast,
                                       started: { $0.cancel() },
                                       onStatus: { status in events.withLock { $0.append(status) } })
        #expect(run.info.status == .cancelled)
        // Before, `setup` went missing: the thread announced it only while the status still read setup.
        #expect(events.withLock { $0 } == [.setup, .cancelling, .cancelled])
    }

    /// Holds the engine, handed over once it exists.
    final class EngineBox: Sendable {
        let engine = Mutex<PrecopySource?>(nil)
    }

    /// A VM whose resume after a failed switchover is where `migrate_cancel` lands.
    final class CancelOnResumeVM: MigrationVMControl {
        let inner = Kit.RecordingVM()
        let box: EngineBox
        init(box: EngineBox) { self.box = box }
        func stopForSwitchover() -> Bool { inner.stopForSwitchover() }
        func migrationCompleted() { inner.migrationCompleted() }
        func resumeAfterFailedSwitchover(wasRunning: Bool) {
            box.engine.withLock { $0 }?.cancel()
            inner.resumeAfterFailedSwitchover(wasRunning: wasRunning)
        }
        func holdAfterUncertainSwitchover() { inner.holdAfterUncertainSwitchover() }
        func setThrottle(percent: Int) { inner.setThrottle(percent: percent) }
    }

    /// State whose save fails once the guest is stopped.
    final class FailingDevice: Migratable {
        let sectionName = "failing"
        let sectionVersion: UInt16 = 1
        func setup() throws(MigrationError) {}
        func pendingEstimate() -> UInt64 { 64 }
        func pendingExact() throws(MigrationError) -> UInt64 { 64 }
        func iterate(_ output: StreamWriter) throws(MigrationError) -> Bool { true }
        func complete(_ output: StreamWriter) throws(MigrationError) { throw .state("the device's state could not be read") }
        func load(_ section: StateSection) throws(MigrationError) {}
        func cleanup() {}
    }

    @Test("migrate_cancel accepted while a failure is handled ends cancelled, never cancelling then failed")
    func cancelDuringFailure() throws {
        let box = EngineBox()
        let vm = CancelOnResumeVM(box: box)
        let events = Mutex<[MigrationStatus]>([])
        let run = try Kit.runMigration(vm: vm, tracker: Kit.OneShotDirtyLog(pages: 1024),
                                       sourceDevices: [FailingDevice()],
                                       destinationDevices: [FailingDevice()], parameters: Self.fast,
                                       started: { engine in box.engine.withLock { $0 = engine } },
                                       onStatus: { status in events.withLock { $0.append(status) } })
        #expect(vm.inner.events.withLock { $0 }.contains("resume"), "the guest was not resumed")
        #expect(run.info.status == .cancelled)
        // Before: ... cancelling, failed.
        #expect(events.withLock { $0 }.suffix(2) == [.cancelling, .cancelled])
    }
}
