import Devices
import GuestMemory
import Testing

/// The virtio-mmio transport and its split virtqueues under a driver that
/// breaks the rules: every hostile ring is refused with DEVICE_NEEDS_RESET and
/// a config interrupt, nothing is written outside RAM, and the device ignores
/// its queues until the driver resets it.
@Suite struct VirtqueueTests {
    let memory: GuestMemoryMap
    let log = HostLog()
    let balloon: VirtioBalloon

    init() throws {
        memory = try GuestMemoryMap.pc(byteCount: 16 << 20, backend: .anon)
        let log = self.log
        balloon = VirtioBalloon(memory: memory, freePageHint: true, host: log.host,
                                setInterruptLine: { level in log.interrupts.withLock { $0.append(level) } })
    }

    func readyDriver() -> TestDriver {
        var driver = TestDriver(balloon.transport, memory: memory)
        #expect(driver.negotiate(VirtioFeature.version1 | BalloonBackend.Feature.freePageHint))
        for q in 0..<3 { driver.setUpQueue(q) }
        driver.driverOK()
        driver.size = 16
        return driver
    }

    @Test func identifiesAsAVersion2BalloonAndOffersItsFeatures() {
        let driver = TestDriver(balloon.transport, memory: memory)
        #expect(driver.read32(0) == 0x7472_6976 && driver.read32(4) == 2 && driver.read32(8) == 5)
        #expect(driver.offered() == VirtioFeature.version1 | BalloonBackend.Feature.freePageHint | BalloonBackend.Feature.pagePoison)
        let plain = VirtioBalloon(memory: memory, freePageHint: false, host: log.host, setInterruptLine: { _ in })
        #expect(TestDriver(plain.transport, memory: memory).offered() == VirtioFeature.version1 | BalloonBackend.Feature.pagePoison)
        // Registers are 32 bits wide: a byte access reads zero.
        #expect(balloon.transport.read(offset: 0, count: 1) == [0])
    }

    @Test func featuresOKNeedsVersion1AndOnlyOfferedFeatures() {
        let driver = TestDriver(balloon.transport, memory: memory)
        #expect(!driver.negotiate(BalloonBackend.Feature.freePageHint), "legacy (no VERSION_1) is refused")
        #expect(!driver.negotiate(VirtioFeature.version1 | BalloonBackend.Feature.statsQueue), "a feature not offered")
        #expect(driver.negotiate(VirtioFeature.version1))
    }

    @Test func aWellFormedInflateIsUsedAndDiscarded() throws {
        var driver = readyDriver()
        // Two PFNs in RAM (contiguous), one far outside it.
        let pfns: [UInt32] = [0x800, 0x801, 0xf_ffff]
        try memory.write(pfns.flatMap { p in (0..<4).map { UInt8(truncatingIfNeeded: p >> (8 * $0)) } }, at: GuestAddress(0x40000))
        try driver.send(0, address: 0x40000, length: 12)
        #expect(try driver.usedIndex(0) == 1)
        #expect(log.discarded.withLock { $0 } == [GuestRange(start: GuestAddress(0x80_0000), byteCount: 0x2000)!])
        #expect(balloon.counters.inflatedPages == 2 && balloon.counters.invalidPFNs == 1)
        #expect(log.interrupts.withLock { $0.last } == true, "used buffers raise the line")
        #expect(balloon.transport.brokenReason == nil)
    }

    /// Each hostile ring, on a fresh device.
    typealias Hostile = (String, @Sendable (inout TestDriver, GuestMemoryMap) throws -> Void, @Sendable (VirtqueueError) -> Bool)
    static let hostile: [Hostile] = [
        ("a descriptor loop", { d, _ in
            try d.writeDescriptor(0, 0, address: 0x40000, length: 4, flags: 1, next: 1)
            try d.writeDescriptor(0, 1, address: 0x40000, length: 4, flags: 1, next: 0)
            try d.makeAvailable(0, head: 0)
            d.notify(0)
        }, { if case .chainTooLong = $0 { true } else { false } }),
        ("an available index far past the ring", { d, _ in
            try d.setAvailableIndex(0, 40)
            d.notify(0)
        }, { if case .availableIndexAhead = $0 { true } else { false } }),
        ("a head past the table", { d, _ in
            try d.makeAvailable(0, head: 99)
            d.notify(0)
        }, { if case .headOutOfRange = $0 { true } else { false } }),
        ("a next past the table", { d, _ in
            try d.writeDescriptor(0, 0, address: 0x40000, length: 4, flags: 1, next: 300)
            try d.makeAvailable(0, head: 0)
            d.notify(0)
        }, { if case .nextOutOfRange = $0 { true } else { false } }),
        ("a buffer outside RAM", { d, _ in try d.send(0, address: 0xfee0_0000, length: 4) },
         { if case .bufferOutsideRAM = $0 { true } else { false } }),
        ("a length that wraps the address space", { d, _ in try d.send(0, address: UInt64.max - 2, length: 16) },
         { if case .bufferOutsideRAM = $0 { true } else { false } }),
        ("a buffer running past the end of RAM", { d, _ in try d.send(0, address: (16 << 20) - 4, length: 8) },
         { if case .bufferOutsideRAM = $0 { true } else { false } }),
        ("an indirect descriptor, never negotiated", { d, _ in
            try d.writeDescriptor(0, 0, address: 0x40000, length: 16, flags: 4)
            try d.makeAvailable(0, head: 0)
            d.notify(0)
        }, { if case .indirectNotNegotiated = $0 { true } else { false } }),
        ("a readable buffer after a writable one", { d, _ in
            try d.writeDescriptor(2, 0, address: 0x40000, length: 4, flags: 3, next: 1)
            try d.writeDescriptor(2, 1, address: 0x40000, length: 4, flags: 0)
            try d.makeAvailable(2, head: 0)
            d.notify(2)
        }, { if case .readableAfterWritable = $0 { true } else { false } }),
        ("a PFN buffer of odd length", { d, _ in try d.send(0, address: 0x40000, length: 6) },
         { if case .badBuffer = $0 { true } else { false } }),
        ("a command id that is not 4 bytes", { d, _ in try d.send(2, address: 0x40000, length: 8) },
         { if case .badBuffer = $0 { true } else { false } }),
    ]

    @Test(arguments: 0..<Self.hostile.count)
    func hostileRingsBreakTheDeviceNotTheVMM(_ which: Int) throws {
        let (name, act, expected) = Self.hostile[which]
        var driver = readyDriver()
        let before = try memory.read(at: GuestAddress(TestDriver.rings(0).used), count: 4096)
        try act(&driver, memory)
        let reason = try #require(balloon.transport.brokenReason, "\(name) must break the device")
        #expect(expected(reason), "\(name): \(reason)")
        #expect(driver.status & 64 != 0, "DEVICE_NEEDS_RESET is set")
        #expect(driver.read32(0x60) & 2 != 0, "with a config interrupt")
        #expect(try memory.read(at: GuestAddress(TestDriver.rings(0).used), count: 4096) == before, "no used entry went out")
        // Ignored until reset: a good buffer now is not processed.
        let used = try driver.usedIndex(1)
        try driver.send(1, address: 0x40000, length: 4)
        #expect(try driver.usedIndex(1) == used)
        // A reset (status 0) clears it; the device works again.
        driver = readyDriver()
        driver.availableIndex = [0, 0, 0, 0]
        #expect(balloon.transport.brokenReason == nil && driver.status & 64 == 0)
    }

    @Test func ringsOutsideRAMAreRefusedWhenTheQueueIsEnabled() {
        let driver = TestDriver(balloon.transport, memory: memory)
        #expect(driver.negotiate(VirtioFeature.version1))
        driver.setUpQueue(0, desc: 0xfeb0_0000)
        #expect(driver.status & 64 != 0)
        #expect(balloon.transport.brokenReason == .ringOutsideRAM(queue: 0, part: "descriptor table", address: 0xfeb0_0000))
        let other = VirtioBalloon(memory: memory, freePageHint: false, host: log.host, setInterruptLine: { _ in })
        let second = TestDriver(other.transport, memory: memory)
        #expect(second.negotiate(VirtioFeature.version1))
        second.setUpQueue(0, size: 24)
        #expect(other.transport.brokenReason == .sizeInvalid(queue: 0, size: 24), "not a power of two")
    }

    @Test func stateRoundTripsAndHostileStateIsRefused() throws {
        var driver = readyDriver()
        try driver.send(0, address: 0x40000, length: 4)
        balloon.setTarget(bytes: 8 << 20)
        let saved = balloon.saveState()
        let copy = VirtioBalloon(memory: memory, freePageHint: true, host: log.host, setInterruptLine: { _ in })
        try copy.loadState(saved)
        #expect(copy.saveState() == saved)
        #expect(TestDriver(copy.transport, memory: memory).config32(0) == (8 << 20) / 4096)
        // Truncated, with junk after it, with a feature this device lacks, with a live ring outside RAM.
        #expect(throws: DeviceStateError.self) { try copy.loadState(Array(saved.dropLast())) }
        #expect(throws: DeviceStateError.self) { try copy.loadState(saved + [0]) }
        var features = saved
        features[12 + 8 + 7] = 0x80       // driverFeatures bit 63
        #expect(throws: DeviceStateError.self) { try copy.loadState(features) }
        let noHints = VirtioBalloon(memory: memory, freePageHint: false, host: log.host, setInterruptLine: { _ in })
        #expect(throws: DeviceStateError.self, "three queues into a device with two") { try noHints.loadState(saved) }
        var ring = saved
        let firstQueue = 4 * 3 + 8 * 2 + 4 * 3 + 1 + 1
        ring[firstQueue + 4 + 1 + 7] = 0x7f   // queue 0's descriptor table, high byte
        #expect(throws: DeviceStateError.self) { try copy.loadState(ring) }
        #expect(copy.saveState() == saved, "a refused state changes nothing")
    }
}
