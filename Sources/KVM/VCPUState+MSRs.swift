/// The pure part of moving a vCPU's MSRs: which ones to save, given the index
/// list the host's KVM reports, and their wire form.  No ioctl: tested with
/// recorded Intel and AMD index lists (Tests/KVMTests).
extension VCPUState {
    /// The MSRs a guest's state lives in beyond the kernel structs (QEMU saves
    /// the same set): TSC, TSC_ADJUST, SPEC_CTRL, SYSENTER, MISC_ENABLE, PAT,
    /// MTRR default, SYSCALL, kernel GS base, TSC_AUX, AMD's VM_HSAVE_PA and
    /// the KVM paravirtual MSRs (kvm-clock, async PF, steal time, PV EOI).
    /// Vendor-specific ones are simply absent from the other vendor's index
    /// list.  Deliberately absent: IA32_ARCH_CAPABILITIES (0x10a) and AMD's
    /// TSC_RATIO (0xc0000104) describe the host and the CPU model, not guest
    /// state; the destination sets them from its own CPUID and TSC frequency.
    public static let migratedMSRs: [UInt32] = [
        0x10, 0x3b, 0x48, 0x174, 0x175, 0x176, 0x1a0, 0x277, 0x2ff,
        0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102, 0xc000_0103,
        0xc001_0117,
        0x4b56_4d00, 0x4b56_4d01, 0x4b56_4d02, 0x4b56_4d03, 0x4b56_4d04,
    ]
    /// IA32_TSC_DEADLINE: restored after the LAPIC, whose timer mode gives it meaning.
    public static let tscDeadlineMSR: UInt32 = 0x6e0
    /// MSRs every x86-64 KVM lists, Intel or AMD: SYSENTER, the TSC, PAT, the
    /// SYSCALL MSRs and the kernel GS base.  An index list without them is not
    /// a real one (an unread or truncated list), and a guest moved without
    /// them crashes on its next system call.
    public static let requiredMSRs: [UInt32] = [
        0x10, 0x174, 0x175, 0x176, 0x277, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102,
    ]
    /// At most this many MSRs move per vCPU (one `KVM_GET_MSRS` request).
    public static let maximumMSRCount = 64

    /// The MSRs to save from `indexList` (`KVM_GET_MSR_INDEX_LIST`): every
    /// migrated one the host lists, in `migratedMSRs` order, then the TSC
    /// deadline if listed.
    ///
    /// - Throws: ``KVMError/msrIndexListLacks(_:)`` if the list lacks a
    ///   required MSR: migrating without them would lose guest state silently.
    public static func msrsToSave(from indexList: [UInt32]) throws(KVMError) -> [UInt32] {
        let listed = Set(indexList)
        let missing = requiredMSRs.filter { !listed.contains($0) }
        guard missing.isEmpty else { throw .msrIndexListLacks(missing) }
        return (migratedMSRs + [tscDeadlineMSR]).filter { listed.contains($0) }
    }

    /// The MSRs in the order a restore loads them: all but the TSC deadline
    /// before the LAPIC, the TSC deadline after it.
    public static func restoreOrder(_ msrs: [MSR]) -> (beforeLAPIC: [MSR], afterLAPIC: [MSR]) {
        (msrs.filter { $0.index != tscDeadlineMSR }, msrs.filter { $0.index == tscDeadlineMSR })
    }

    /// The MSR part of a saved vCPU state, little-endian:
    /// `count u16 | (index u32 | value u64)*`.
    public static func encodeMSRs(_ msrs: [MSR]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(2 + msrs.count * 12)
        func append<T: FixedWidthInteger>(_ value: T) {
            for shift in stride(from: 0, to: T.bitWidth, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
        }
        append(UInt16(msrs.count))
        for msr in msrs {
            append(msr.index)
            append(msr.value)
        }
        return bytes
    }

    /// Decodes an MSR part from the start of `bytes`; returns the MSRs and how
    /// many bytes they took.  Checks the count and every length before reading,
    /// and refuses an MSR that appears twice.
    public static func decodeMSRs(_ bytes: ArraySlice<UInt8>) throws(VCPUStateError) -> (msrs: [MSR], byteCount: Int) {
        func value(at offset: Int, _ width: Int) -> UInt64 {
            let start = bytes.startIndex + offset
            return bytes[start..<start + width].reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        guard bytes.count >= 2 else { throw .invalid("the MSR count is truncated") }
        let count = Int(value(at: 0, 2))
        guard count <= maximumMSRCount else { throw .tooManyMSRs(count) }
        let byteCount = 2 + count * 12
        guard bytes.count >= byteCount else { throw .invalid("\(count) MSRs need \(byteCount) bytes, \(bytes.count) left") }
        var msrs: [MSR] = []
        var seen = Set<UInt32>()
        for i in 0..<count {
            let msr = MSR(index: UInt32(value(at: 2 + i * 12, 4)), value: value(at: 6 + i * 12, 8))
            guard seen.insert(msr.index).inserted else { throw .invalid("MSR \(hex(msr.index)) appears twice") }
            msrs.append(msr)
        }
        return (msrs, byteCount)
    }
}

/// An MSR index as the manuals write it.
func hex(_ index: UInt32) -> String { "0x" + String(index, radix: 16) }
