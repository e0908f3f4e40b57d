import GuestMemory

extension VirtioMMIOTransport {
    /// The transport's registers, every queue's layout and position, then the backend's state.
    public func saveState() -> [UInt8] {
        state.withLock { s in
            var e = DeviceStateEncoder()
            e.u32(s.status.rawValue)
            e.u32(s.deviceFeaturesSelect)
            e.u32(s.driverFeaturesSelect)
            e.u64(s.driverFeatures)
            e.u64(s.negotiated)
            e.u32(s.queueSelect)
            e.u32(s.interruptStatus)
            e.u32(s.configGeneration)
            e.bool(s.broken != nil)
            e.u8(UInt8(s.queues.count))
            for q in s.queues {
                e.u32(q.size)
                e.bool(q.ready)
                e.u64(q.descriptorTable)
                e.u64(q.availableRing)
                e.u64(q.usedRing)
                e.u16(q.nextAvailable)
                e.u16(q.nextUsed)
            }
            s.backend.encodeState(into: &e)
            return e.bytes
        }
    }

    /// Loads `saveState()`'s bytes; nothing changes if they are refused.  Live
    /// queues must lie in this machine's RAM, and the features must be ones this
    /// device offers.
    public func loadState(_ bytes: [UInt8], what: String) throws(DeviceStateError) {
        var d = DeviceStateDecoder(bytes, what: what)
        var s = State(backend: state.withLock { $0.backend })
        s.status = VirtioStatus(rawValue: try d.u32())
        s.deviceFeaturesSelect = try d.u32()
        s.driverFeaturesSelect = try d.u32()
        s.driverFeatures = try d.u64()
        s.negotiated = try d.u64()
        s.queueSelect = try d.u32()
        s.interruptStatus = try d.u32()
        s.configGeneration = try d.u32()
        let broken = try d.bool()
        guard s.status.rawValue & ~0xff == 0, s.interruptStatus & ~3 == 0 else { throw DeviceStateError("\(what): invalid status or interrupt bits") }
        guard s.negotiated & ~s.backend.deviceFeatures == 0, s.driverFeatures & ~s.backend.deviceFeatures == 0 else {
            throw DeviceStateError("\(what): features 0x\(String(s.negotiated, radix: 16)) this device does not offer")
        }
        let count = Int(try d.u8())
        guard count == s.queues.count else { throw DeviceStateError("\(what): \(count) queues, this device has \(s.queues.count)") }
        for i in 0..<count {
            var q = SplitVirtqueue(index: i)
            q.size = try d.u32()
            q.ready = try d.bool()
            q.descriptorTable = try d.u64()
            q.availableRing = try d.u64()
            q.usedRing = try d.u64()
            q.nextAvailable = try d.u16()
            q.nextUsed = try d.u16()
            if q.ready {
                do { try q.validate(memory) } catch { throw DeviceStateError("\(what): \(error)") }
            }
            s.queues[i] = q
        }
        s.backend.featuresNegotiated(s.negotiated)
        try s.backend.decodeState(from: &d)
        try d.finish()
        if broken { s.broken = .badBuffer(queue: -1, reason: "the device needed a reset when it was migrated") }
        let line = s.interruptStatus != 0
        state.withLock { $0 = s }
        setInterruptLine(line)
    }
}
