import GuestMemory

/// What the balloon asks of the machine.  Called under the device's lock.
public struct BalloonHost: Sendable {
    /// Gives the host the memory of an inflated page range back (or keeps it, when it cannot).
    public var discard: @Sendable (GuestRange) -> Void
    /// The driver changed `actual`: the guest now has this many bytes (QEMU's BALLOON_CHANGE).
    public var actualChanged: @Sendable (UInt64) -> Void

    public init(discard: @escaping @Sendable (GuestRange) -> Void, actualChanged: @escaping @Sendable (UInt64) -> Void) {
        self.discard = discard
        self.actualChanged = actualChanged
    }
}

/// Applies one free-page hint for a migration: clears the range's pages that
/// syncs up to `epoch` marked dirty and not yet sent; returns how many.
public typealias FreePageHintTarget = @Sendable (_ range: GuestRange, _ epoch: UInt64) -> Int

/// A virtio-balloon (device id 5): inflate and deflate queues, and with
/// `free-page-hint=on` the free-page queue and FREE_PAGE_HINT.
///
/// Queues: inflate 0, deflate 1, free page 2.  This device offers no stats
/// queue, so its free-page queue sits one lower than on QEMU's device (which
/// always has one): a driver must number queues by the features it is offered.
public struct BalloonBackend: VirtioBackend, VirtioBackendState {
    public enum Feature {
        public static let mustTellHost: UInt64 = 1 << 0
        public static let statsQueue: UInt64 = 1 << 1
        public static let freePageHint: UInt64 = 1 << 3
        public static let pagePoison: UInt64 = 1 << 4
    }
    public static let inflateQueue = 0
    public static let deflateQueue = 1
    public static let freePageQueue = 2
    /// Balloon PFNs are 4 KiB frames whatever the guest's page size.
    public static let pfnShift: UInt64 = 12

    public let freePageHint: Bool
    public let ramBytes: UInt64
    let host: BalloonHost
    /// `num_pages`: how many 4 KiB pages the host wants in the balloon.
    public internal(set) var targetPages: UInt32 = 0
    /// `actual`: how many the driver says it holds.
    public internal(set) var actualPages: UInt32 = 0
    public internal(set) var poisonValue: UInt32 = 0
    public internal(set) var hinting = FreePageHinting()
    var negotiated: UInt64 = 0
    /// Where hints go while a migration asks for them.
    var hintTarget: FreePageHintTarget?
    public internal(set) var counters = BalloonCounters()

    public init(ramBytes: UInt64, freePageHint: Bool, host: BalloonHost) {
        self.ramBytes = ramBytes
        self.freePageHint = freePageHint
        self.host = host
    }

    public var deviceID: UInt32 { 5 }
    /// VERSION_1 and PAGE_POISON (on by default on QEMU's device), FREE_PAGE_HINT when asked for.
    public var deviceFeatures: UInt64 {
        VirtioFeature.version1 | Feature.pagePoison | (freePageHint ? Feature.freePageHint : 0)
    }
    public var queueCount: Int { freePageHint ? 3 : 2 }

    /// num_pages, actual, free_page_hint_cmd_id, poison_val: 16 bytes, as QEMU's
    /// device has with PAGE_POISON offered.
    public func configBytes(negotiated: UInt64) -> [UInt8] {
        var e = DeviceStateEncoder()
        e.u32(targetPages)
        e.u32(actualPages)
        e.u32(hinting.configCommandID)
        e.u32(poisonValue)
        return e.bytes
    }

    public mutating func writeConfig(offset: Int, bytes: [UInt8], context: inout VirtioContext) {
        guard bytes.count == 4 else { return }
        let value = bytes.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        switch offset {
        case 4:
            guard value != actualPages else { return }
            actualPages = value
            host.actualChanged(actualBytes)
        case 12 where negotiated & Feature.pagePoison != 0: poisonValue = value
        default: break      // num_pages and the command id are the device's
        }
    }

    /// The guest's memory as the balloon leaves it: RAM minus what the driver holds.
    public var actualBytes: UInt64 { ramBytes - min(ramBytes, UInt64(actualPages) << Self.pfnShift) }

    public mutating func featuresNegotiated(_ features: UInt64) { negotiated = features }

    /// As QEMU's reset: the hint state goes to STOP and the poison value to 0.
    public mutating func reset() {
        negotiated = 0
        actualPages = 0
        poisonValue = 0
        hinting.reset()
    }

    public mutating func process(queue index: Int, context: inout VirtioContext) throws(VirtqueueError) {
        while let chain = try context.pop(queue: index) {
            switch index {
            case Self.inflateQueue: try inflate(chain, queue: index, context: context)
            case Self.deflateQueue: try deflate(chain, queue: index, context: context)
            default: try freePages(chain, context: context)
            }
            try context.push(queue: index, chain)
        }
    }

    /// Each readable buffer holds little-endian 32-bit PFNs.  A PFN outside RAM is
    /// skipped, as QEMU skips it; runs of pages in RAM are discarded together.
    mutating func inflate(_ chain: DescriptorChain, queue: Int, context: borrowing VirtioContext) throws(VirtqueueError) {
        var run: (start: UInt64, count: UInt64)?
        for pfn in try pfns(chain, queue: queue, context: context) {
            let address = UInt64(pfn) << Self.pfnShift
            guard (try? context.guestMemory.locate(GuestAddress(address), length: 1 << Self.pfnShift)) != nil else {
                counters.invalidPFNs += 1
                continue
            }
            counters.inflatedPages += 1
            if let r = run, r.start + r.count << Self.pfnShift == address { run = (r.start, r.count + 1); continue }
            if let r = run { host.discard(GuestRange(start: GuestAddress(r.start), byteCount: r.count << Self.pfnShift)!) }
            run = (address, 1)
        }
        if let r = run { host.discard(GuestRange(start: GuestAddress(r.start), byteCount: r.count << Self.pfnShift)!) }
    }

    /// Deflated pages come back on their next touch: only counted.
    mutating func deflate(_ chain: DescriptorChain, queue: Int, context: borrowing VirtioContext) throws(VirtqueueError) {
        counters.deflatedPages += UInt64(try pfns(chain, queue: queue, context: context).count)
    }

    func pfns(_ chain: DescriptorChain, queue: Int, context: borrowing VirtioContext) throws(VirtqueueError) -> [UInt32] {
        var result: [UInt32] = []
        for buffer in chain.readable {
            guard buffer.byteCount % 4 == 0, buffer.byteCount <= 1 << 20 else {
                throw .badBuffer(queue: queue, reason: "a PFN buffer of \(buffer.byteCount) bytes")
            }
            guard let bytes = try? context.guestMemory.read(at: buffer.start, count: Int(buffer.byteCount)) else {
                throw .bufferOutsideRAM(queue: queue, address: buffer.start.rawValue, length: UInt32(buffer.byteCount))
            }
            for i in stride(from: 0, to: bytes.count, by: 4) {
                result.append(UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
            }
        }
        return result
    }

    /// A command id (one readable 4-byte buffer) and/or free blocks (writable
    /// buffers): hints only while the current command has started.
    mutating func freePages(_ chain: DescriptorChain, context: borrowing VirtioContext) throws(VirtqueueError) {
        if !chain.readable.isEmpty {
            guard chain.readable.count == 1, chain.readable[0].byteCount == 4,
                  let bytes = try? context.guestMemory.read(at: chain.readable[0].start, count: 4) else {
                throw .badBuffer(queue: Self.freePageQueue, reason: "a command id buffer that is not 4 bytes")
            }
            hinting.received(commandID: bytes.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        }
        for block in chain.writable {
            counters.reportedPages += block.byteCount >> Self.pfnShift
            guard hinting.accepting, let target = hintTarget else {
                counters.ignoredPages += block.byteCount >> Self.pfnShift
                continue
            }
            counters.clearedPages += UInt64(target(block, hinting.epoch))
        }
    }

    // MARK: migration's hint commands

    mutating func startHinting(epoch: UInt64, target: @escaping FreePageHintTarget) -> Bool {
        guard freePageHint, negotiated & Feature.freePageHint != 0 else { return false }
        hintTarget = target
        return hinting.start(epoch: epoch)
    }

    mutating func stopHinting() -> Bool { hinting.stop() }

    mutating func finishHinting() -> Bool {
        hintTarget = nil
        return hinting.finish()
    }

    // MARK: state

    public func encodeState(into e: inout DeviceStateEncoder) {
        e.u32(targetPages)
        e.u32(actualPages)
        e.u32(poisonValue)
        e.u8(hinting.status.rawValue)
        e.u32(hinting.commandID)
    }

    public mutating func decodeState(from d: inout DeviceStateDecoder) throws(DeviceStateError) {
        targetPages = try d.u32()
        actualPages = try d.u32()
        poisonValue = try d.u32()
        let status = try d.u8(), id = try d.u32()
        // The epoch belongs to the source's migration; here no migration asks for hints yet.
        guard let loaded = FreePageHinting(status: status, commandID: id, epoch: 0) else {
            throw DeviceStateError("virtio-balloon: free page hint status \(status)")
        }
        hinting = loaded
        hintTarget = nil
    }
}

/// Pages through each queue since the device was created.
public struct BalloonCounters: Equatable, Sendable {
    public var inflatedPages: UInt64 = 0
    public var deflatedPages: UInt64 = 0
    public var invalidPFNs: UInt64 = 0
    /// Pages the driver reported free.
    public var reportedPages: UInt64 = 0
    /// Reported while no command had started (stale, or no migration): not hints.
    public var ignoredPages: UInt64 = 0
    /// Dirty pages the hints took out of a migration's bitmaps: pages not sent.
    public var clearedPages: UInt64 = 0
}
