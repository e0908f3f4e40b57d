import CLinuxUAPI
import GuestMemory

extension VirtualMachine {
    /// Turns on manual dirty-log protection with initially-set bitmaps
    /// (`KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2`): enabling logging then costs
    /// nothing up front, the first collection reports every page, and pages are
    /// write-protected again only when `collectDirtyLog` clears them.
    public func enableManualDirtyLogProtection() throws(KVMError) {
        guard system.checkExtension(Int32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)) != 0 else {
            throw .missingCapability("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        }
        try Ioctl.enableCapability(descriptor, UInt32(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2),
                                   argument: UInt64(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET))
    }

    /// Starts or stops dirty logging on the slots of `block` (numbered from `firstSlot`
    /// as `map` numbered them), by re-installing each slot with the new flag.
    public func setDirtyLogging(_ block: RAMBlock, firstSlot: MemorySlot, enabled: Bool) throws(KVMError) {
        try map(block, firstSlot: firstSlot, logDirtyPages: enabled)
    }

    /// Returns and clears the pages the guest wrote in `slot` since the last call
    /// (every page on the first call after logging starts).  Corresponds to
    /// `KVM_GET_DIRTY_LOG` followed by `KVM_CLEAR_DIRTY_LOG` of exactly the pages
    /// returned: a page written after the clear is reported by the next call, so
    /// read a page's contents only after collecting it.  The bitmap is sized
    /// from the slot as `map` installed it, so KVM never writes past it.
    ///
    /// Pages written by the VMM itself are not included.
    /// - Throws: ``KVMError/unknownSlot(_:)`` for a slot never mapped;
    ///   ``KVMError/ioctl(_:_:)`` with `ENOENT` if `slot` is not logging.
    ///
    /// With `clearing` false only `KVM_GET_DIRTY_LOG`: the pages stay set in the
    /// log, nothing is write-protected again, and the next call returns them
    /// again (the last look with the guest stopped: at the switch to postcopy,
    /// with many pages dirty, the clear was 7.5-9 ms of an 8-15 ms downtime).
    public func collectDirtyLog(slot: MemorySlot, clearing: Bool = true) throws(KVMError) -> DirtyBitmap {
        guard let pageCount = pageCount(of: slot) else { throw .unknownSlot(slot.rawValue) }
        var words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        try Ioctl.getDirtyLog(descriptor, slot: slot.rawValue, into: &words)
        if clearing, words.contains(where: { $0 != 0 }) {
            try Ioctl.clearDirtyLog(descriptor, slot: slot.rawValue, pageCount: pageCount, words: &words)
        }
        return DirtyBitmap(words: words, pageCount: pageCount)
    }

    /// Re-arms logging for `pages` of `slot` (slot-relative) that the log still
    /// holds set: `KVM_CLEAR_DIRTY_LOG` of exactly those pages, which write-protects
    /// them again, so the guest's next write to one is reported.  A page already
    /// re-armed is left as it is (KVM clears only pages both set in the log and
    /// named here), and so is every page outside `pages`: the request is widened
    /// to KVM's 64-page alignment with those bits left clear.
    ///
    /// For a collection that reported every page without clearing (the first after
    /// logging starts, under `KVM_DIRTY_LOG_INITIALLY_SET`): pages are re-armed
    /// just before they are read, as QEMU's clear bitmap does, instead of all at once.
    public func rearmDirtyLog(slot: MemorySlot, pages: Range<Int>) throws(KVMError) {
        guard let slotPages = pageCount(of: slot) else { throw .unknownSlot(slot.rawValue) }
        let lower = max(pages.lowerBound, 0), upper = min(pages.upperBound, slotPages)
        guard lower < upper else { return }
        let first = lower & ~63
        let count = min((upper - first + 63) & ~63, slotPages - first)
        // Bits for [lower - first, upper - first): whole words but the first and last.
        let from = lower - first, to = upper - first
        var words = [UInt64](repeating: 0, count: (count + 63) / 64)
        for word in (from >> 6)...((to - 1) >> 6) {
            let low = max(from, word << 6) - (word << 6), high = min(to, (word + 1) << 6) - (word << 6)
            words[word] = (high - low == 64 ? ~0 : (UInt64(1) << UInt64(high - low)) - 1) << UInt64(low)
        }
        try Ioctl.clearDirtyLog(descriptor, slot: slot.rawValue, firstPage: first, pageCount: count, words: &words)
    }
}
