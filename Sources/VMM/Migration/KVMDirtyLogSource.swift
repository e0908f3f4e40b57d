import GuestMemory
import KVM
import Migration
import Synchronization

/// Dirty pages from KVM's dirty log with manual clearing, per RAM block,
/// plus the pages the VMM itself wrote (which KVM cannot see).
///
/// Every slot of every block logs while tracking is on; `collectDirtyPages`
/// gets and clears each slot's log and places it in its block's bitmap.
///
/// The first collection after `startTracking` reports every page without
/// touching the log (KVM starts it all set) and leaves re-arming to
/// `prepareToRead`, one stretch (`rearmPages`) at a time just before its pages
/// are read: write-protecting a 1.5 GiB guest at once took 12 ms before the
/// first page could go out.  A stretch still waiting is re-armed by the next
/// collection without being reported again: nothing has read its pages since
/// the first collection reported them, so that report still stands (and a
/// sync that counts what the guest dirtied does not count them).
final class KVMDirtyLogSource: DirtyPageSource {
    let vm: VirtualMachine
    let slots: [MemorySlotMapping]
    let memory: GuestMemoryMap
    /// Pages per stretch re-armed at once (2 MiB): a multiple of KVM's 64.
    static let rearmPages = 512

    /// What the log holds beyond what was collected.
    struct Arming {
        /// The next collection is the first since tracking started (it reports every page).
        var first = false
        /// Per block: the stretches whose pages the first collection reported
        /// and left set in the log.
        var waiting: [String: DirtyBitmap] = [:]
    }

    /// Held across the ioctls that change it: a stretch counts as re-armed only
    /// once KVM has write-protected it, so nobody reads its pages before.
    let arming = Mutex(Arming())

    init(vm: VirtualMachine, slots: [MemorySlotMapping], memory: GuestMemoryMap) {
        self.vm = vm
        self.slots = slots
        self.memory = memory
    }

    func startTracking() throws {
        try arming.withLock { arming in
            memory.startRecordingWrites()
            try setLogging(true)
            arming = Arming(first: true)
        }
    }

    func stopTracking() throws {
        try arming.withLock { arming in
            memory.stopRecordingWrites()
            try setLogging(false)
            arming = Arming()
        }
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

    func prepareToRead(block name: String, pages: Range<Int>) throws {
        try arming.withLock { arming in
            // Taken out while it changes (no copy of the bitmap), put back unless empty.
            guard var waiting = arming.waiting.removeValue(forKey: name) else { return }
            defer { if !waiting.isEmpty { arming.waiting[name] = waiting } }
            let units = Self.rearmPages
            let upper = min((pages.upperBound + units - 1) / units, waiting.pageCount)
            var unit = max(pages.lowerBound, 0) / units
            // Each run of waiting stretches in one ioctl.
            while unit < upper, let start = waiting.nextSetPage(from: unit), start < upper {
                var end = start + 1
                while end < upper, waiting[end] { end += 1 }
                try rearm(block: name, pages: start * units..<end * units)
                for stretch in start..<end { waiting[stretch] = false }
                unit = end
            }
        }
    }

    /// `KVM_CLEAR_DIRTY_LOG` of `pages` of block `name` (block pages), slot by slot.
    private func rearm(block name: String, pages: Range<Int>) throws {
        for mapping in slots where mapping.block.name == name {
            let first = mapping.firstBlockPage
            let lower = max(pages.lowerBound, first), upper = min(pages.upperBound, first + mapping.pageCount)
            guard lower < upper else { continue }
            try vm.rearmDirtyLog(slot: mapping.slot, pages: lower - first..<upper - first)
        }
    }

    private func collect(ending: Bool) throws -> [String: DirtyBitmap] {
        try arming.withLock { arming in
            var result: [String: DirtyBitmap] = [:]
            if arming.first {
                // KVM's log is all set: every page, nothing to read or clear yet.
                for mapping in slots where result[mapping.block.name] == nil {
                    let pageCount = Int(mapping.block.byteCount) / PageSize.base.byteCount
                    result[mapping.block.name] = DirtyBitmap(pageCount: pageCount, allSet: true)
                    arming.waiting[mapping.block.name] = DirtyBitmap(pageCount: (pageCount + Self.rearmPages - 1) / Self.rearmPages,
                                                                      allSet: true)
                }
                arming.first = !ending
            } else {
                for mapping in slots {
                    let log = try vm.collectDirtyLog(slot: mapping.slot, clearing: ending)
                    var bitmap = result[mapping.block.name] ?? DirtyBitmap(pageCount: Int(mapping.block.byteCount) / PageSize.base.byteCount)
                    bitmap.insert(log, atPage: mapping.firstBlockPage)
                    result[mapping.block.name] = bitmap
                }
                // Stretches still waiting are all set in the log: not reported again
                // (the first collection's report stands), and re-armed by this clear.
                for (name, stretches) in arming.waiting where result[name] != nil {
                    let pageCount = result[name]!.pageCount
                    result[name]!.subtract(DirtyBitmap(expanding: stretches, unitPages: Self.rearmPages, pageCount: pageCount))
                }
                if ending { arming.waiting = [:] }
            }
            // The VMM's own writes, which KVM does not log.
            for (name, written) in ending ? memory.takeRecordedWrites() : memory.peekRecordedWrites() {
                result[name]?.formUnion(written)
            }
            return result
        }
    }
}

extension Machine {
    /// A dirty-page source over all of this machine's RAM (KVM's dirty log).
    public func makeDirtyPageSource() -> any DirtyPageSource {
        KVMDirtyLogSource(vm: vm, slots: memorySlots, memory: memory)
    }
}
