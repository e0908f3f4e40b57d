import GuestMemory
import KVM
import Migration

/// Dirty pages from KVM's dirty log with manual clearing, per RAM block,
/// plus the pages the VMM itself wrote (which KVM cannot see).
///
/// Every slot of every block logs while tracking is on; `collectDirtyPages`
/// gets and clears each slot's log and places it in its block's bitmap.
final class KVMDirtyLogSource: DirtyPageSource {
    let vm: VirtualMachine
    let slots: [MemorySlotMapping]
    let memory: GuestMemoryMap

    init(vm: VirtualMachine, slots: [MemorySlotMapping], memory: GuestMemoryMap) {
        self.vm = vm
        self.slots = slots
        self.memory = memory
    }

    func startTracking() throws {
        memory.startRecordingWrites()
        try setLogging(true)
    }

    func stopTracking() throws {
        memory.stopRecordingWrites()
        try setLogging(false)
    }

    private func setLogging(_ enabled: Bool) throws {
        var done = Set<ObjectIdentifier>()
        for mapping in slots where done.insert(ObjectIdentifier(mapping.block)).inserted {
            try vm.setDirtyLogging(mapping.block, firstSlot: mapping.firstSlotOfBlock, enabled: enabled)
        }
    }

    func collectDirtyPages() throws -> [String: DirtyBitmap] { try collect(ending: true) }

    /// KVM's log read without its clear, and the VMM's writes kept for the next collection.
    func peekDirtyPages() throws -> [String: DirtyBitmap] { try collect(ending: false) }

    private func collect(ending: Bool) throws -> [String: DirtyBitmap] {
        var result: [String: DirtyBitmap] = [:]
        for mapping in slots {
            let log = try vm.collectDirtyLog(slot: mapping.slot, clearing: ending)
            var bitmap = result[mapping.block.name] ?? DirtyBitmap(pageCount: Int(mapping.block.byteCount) / PageSize.base.byteCount)
            bitmap.insert(log, atPage: mapping.firstBlockPage)
            result[mapping.block.name] = bitmap
        }
        // The VMM's own writes, which KVM does not log.
        for (name, written) in ending ? memory.takeRecordedWrites() : memory.peekRecordedWrites() {
            result[name]?.formUnion(written)
        }
        return result
    }
}

extension Machine {
    /// A dirty-page source over all of this machine's RAM (KVM's dirty log).
    public func makeDirtyPageSource() -> any DirtyPageSource {
        KVMDirtyLogSource(vm: vm, slots: memorySlots, memory: memory)
    }
}
