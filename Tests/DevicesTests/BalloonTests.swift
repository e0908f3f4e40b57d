import Foundation
import Devices
import GuestMemory
import Synchronization
import Testing

/// The balloon's host side: targets, `actual`, and free page hint commands.
@Suite struct BalloonTests {
    let memory: GuestMemoryMap
    let log = HostLog()
    let balloon: VirtioBalloon

    init() throws {
        memory = try GuestMemoryMap.pc(byteCount: 16 << 20, backend: .anon)
        balloon = VirtioBalloon(memory: memory, freePageHint: true, host: log.host, setInterruptLine: { _ in })
    }

    func readyDriver() -> TestDriver {
        let driver = TestDriver(balloon.transport, memory: memory)
        #expect(driver.negotiate(VirtioFeature.version1 | BalloonBackend.Feature.freePageHint))
        for q in 0..<3 { driver.setUpQueue(q) }
        driver.driverOK()
        return driver
    }

    @Test func aTargetBecomesNumPagesAndActualIsReported() {
        let driver = readyDriver()
        #expect(!balloon.isActive || balloon.actualBytes == 16 << 20)
        let generation = driver.read32(0xfc)
        balloon.setTarget(bytes: 12 << 20)
        #expect(driver.config32(0) == (4 << 20) / 4096)
        #expect(driver.read32(0xfc) != generation && driver.read32(0x60) & 2 != 0, "a config change, announced")
        driver.write32(0x104, 1024)
        #expect(balloon.actualBytes == 12 << 20)
        #expect(log.actual.withLock { $0 } == [12 << 20])
        driver.write32(0x104, 1024)
        #expect(log.actual.withLock { $0 }.count == 1, "BALLOON_CHANGE only when actual changes")
        balloon.setTarget(bytes: 64 << 30)
        #expect(driver.config32(0) == 0, "more than RAM means an empty balloon")
    }

    @Test func hintsApplyOnlyBetweenTheEchoAndTheNextStop() throws {
        var driver = readyDriver()
        let applied = Mutex<[(GuestRange, UInt64)]>([])
        let target: FreePageHintTarget = { range, epoch in
            applied.withLock { list in list.append((range, epoch)) }
            return Int(range.byteCount / 4096)
        }
        func report(_ address: UInt64) throws { try driver.send(2, address: address, length: 0x10000, deviceWrites: true) }
        func echo(_ id: UInt32) throws {
            try memory.write((0..<4).map { UInt8(truncatingIfNeeded: id >> (8 * $0)) }, at: GuestAddress(0x50000))
            try driver.send(2, address: 0x50000, length: 4)
        }
        #expect(driver.config32(8) == FreePageHinting.stopID, "QEMU's device starts at STOP")
        try report(0x100000)                                  // before any command: not a hint
        #expect(balloon.startHinting(epoch: 7, target: target))
        let id = driver.config32(8)
        #expect(id == FreePageHinting.minimumID + 1, "the first command, as QEMU's")
        try report(0x110000)                                  // before the echo: not a hint
        try echo(id)
        #expect(driver.config32(8) == 0, "started: the field reads 0, as QEMU's does")
        try report(0x120000)                                  // a hint, for sync 7
        balloon.stopHinting()
        try report(0x130000)                                  // after STOP: dropped
        #expect(balloon.startHinting(epoch: 8, target: target))
        #expect(driver.config32(8) == id + 1)
        try echo(id)                                          // an old echo starts nothing
        try report(0x140000)
        try echo(id + 1)
        try report(0x150000)                                  // a hint, for sync 8
        try echo(FreePageHinting.stopID)                      // the driver's STOP ends the round
        try report(0x160000)
        balloon.finishHinting()
        #expect(driver.config32(8) == FreePageHinting.doneID)
        let hints = applied.withLock { $0 }
        #expect(hints.map(\.0.start.rawValue) == [0x120000, 0x150000])
        #expect(hints.map(\.1) == [7, 8])
        #expect(balloon.counters.reportedPages == 7 * 16 && balloon.counters.ignoredPages == 5 * 16 && balloon.counters.clearedPages == 2 * 16)
    }

    @Test func noHintCommandsUnlessTheDriverNegotiatedThem() {
        let driver = TestDriver(balloon.transport, memory: memory)
        #expect(driver.negotiate(VirtioFeature.version1))
        for q in 0..<3 { driver.setUpQueue(q) }
        driver.driverOK()
        let started = balloon.startHinting(epoch: 1, target: { _, _ in 0 })
        #expect(!started)
        #expect(driver.config32(8) == FreePageHinting.stopID)
    }
}

/// The hint state machine alone.
@Suite struct FreePageHintingTests {
    @Test func idsStartAtTheMinimumAndWrapBackToIt() {
        var hinting = FreePageHinting()
        #expect(hinting.status == .stopped && hinting.configCommandID == FreePageHinting.stopID)
        _ = hinting.start(epoch: 1)
        #expect(hinting.commandID == 0x8000_0001 && hinting.configCommandID == 0x8000_0001)
        var wrapped = FreePageHinting(status: 1, commandID: .max, epoch: 3)!
        _ = wrapped.start(epoch: 4)
        #expect(wrapped.commandID == 0x8000_0000 && wrapped.epoch == 4)
        #expect(FreePageHinting(status: 9, commandID: 0, epoch: 0) == nil)
    }

    @Test func stopAndFinishReportWhetherTheConfigChanged() {
        var hinting = FreePageHinting()
        let stoppedIdle = hinting.stop()
        #expect(!stoppedIdle, "nothing to stop")
        let finishedIdle = hinting.finish()
        #expect(finishedIdle, "STOP to DONE changes the field")
        let finishedAgain = hinting.finish()
        #expect(!finishedAgain, "already done")
        _ = hinting.start(epoch: 1)
        hinting.received(commandID: hinting.commandID)
        #expect(hinting.accepting)
        let stopped = hinting.stop()
        #expect(stopped && !hinting.accepting && hinting.configCommandID == 0)
        let finished = hinting.finish()
        #expect(finished && hinting.configCommandID == 1)
    }

    /// A vCPU inflating holds the device's lock while it asks the machine
    /// (under the machine's migration lock) whether it may discard; `migrate`
    /// holds that migration lock while it asks the balloon whether it hints.
    /// So the question must not take the device's lock: it used to, and the
    /// two waited on each other for good.
    @Test func whetherItHintsIsAnsweredWhileTheDeviceIsBusy() throws {
        let holding = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let memory = try GuestMemoryMap.pc(byteCount: 16 << 20, backend: .anon)
        let balloon = VirtioBalloon(memory: memory, freePageHint: true, host: HostLog().host, setInterruptLine: { _ in })
        let busy = Thread {
            balloon.transport.withBackend { _, _ in
                holding.signal()
                _ = release.wait(timeout: .now() + 10)
            }
        }
        busy.start()
        holding.wait()
        let answered = DispatchSemaphore(value: 0)
        Thread {
            _ = balloon.freePageHint
            answered.signal()
        }.start()
        let inTime = answered.wait(timeout: .now() + 2) == .success
        #expect(inTime, "freePageHint waited for the device's lock")
        release.signal()
        if !inTime { _ = answered.wait(timeout: .now() + 10) }
    }
}
