import KVM
import Testing

/// Which MSRs a vCPU capture saves, and their wire form, over recorded index
/// lists of both vendors: no KVM needed.
@Suite struct MSRSelectionTests {
    /// What every host saves: the SYSCALL/SYSENTER state, TSC, PAT, kvm-clock and friends.
    static let common: [UInt32] = [
        0x10, 0x3b, 0x48, 0x174, 0x175, 0x176, 0x1a0, 0x277,
        0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102, 0xc000_0103,
    ]
    static let paravirtual: [UInt32] = [0x4b56_4d00, 0x4b56_4d01, 0x4b56_4d02, 0x4b56_4d03, 0x4b56_4d04]

    @Test func intelSavesTheGuestStateNotTheHostsFeatures() throws {
        let chosen = try VCPUState.msrsToSave(from: RecordedMSRIndexLists.intelXeon.indices)
        #expect(chosen == Self.common + Self.paravirtual + [0x6e0])
        #expect(!chosen.contains(0x10a), "ARCH_CAPABILITIES describes the host")
        #expect(!chosen.contains(0xc001_0117), "AMD-only")
    }

    @Test func amdSavesVMHsaveButNotTSCRatioOrArchCapabilities() throws {
        let chosen = try VCPUState.msrsToSave(from: RecordedMSRIndexLists.amdEPYC.indices)
        #expect(chosen == Self.common + [0xc001_0117] + Self.paravirtual + [0x6e0])
        #expect(!chosen.contains(0xc000_0104), "TSC_RATIO follows from KVM_SET_TSC_KHZ")
        #expect(!chosen.contains(0x10a))
    }

    @Test("every chosen MSR is one the host lists, and none twice", arguments: RecordedMSRIndexLists.allCases)
    func choiceIsASubsetOfTheList(host: RecordedMSRIndexLists) throws {
        let list = host.indices
        let chosen = try VCPUState.msrsToSave(from: list)
        #expect(chosen.allSatisfy(list.contains))
        #expect(Set(chosen).count == chosen.count)
        #expect(chosen.count <= VCPUState.maximumMSRCount)
        #expect(VCPUState.requiredMSRs.allSatisfy(chosen.contains))
    }

    @Test("save, encode, decode and restore order round-trip exactly", arguments: RecordedMSRIndexLists.allCases)
    func roundTrip(host: RecordedMSRIndexLists) throws {
        let chosen = try VCPUState.msrsToSave(from: host.indices)
        var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
        let saved = chosen.map { index in
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return VCPUState.MSR(index: index, value: seed)
        }
        let encoded = VCPUState.encodeMSRs(saved)
        #expect(encoded.count == 2 + 12 * saved.count)
        // Trailing bytes (the TSC frequency follows on the wire) are left alone.
        let decoded = try VCPUState.decodeMSRs(ArraySlice(encoded + [1, 2, 3, 4]))
        #expect(decoded.msrs == saved)
        #expect(decoded.byteCount == encoded.count)
        let (before, after) = VCPUState.restoreOrder(decoded.msrs)
        #expect(after == saved.filter { $0.index == 0x6e0 } && after.count == 1)
        #expect(before + after == saved, "TSC deadline is chosen last, so the restore order keeps the saved order")
    }

    @Test func theWireFormIsLittleEndianCountThenEntries() {
        let bytes = VCPUState.encodeMSRs([VCPUState.MSR(index: 0xc000_0081, value: 0x0102_0304_0506_0708)])
        #expect(bytes == [1, 0, 0x81, 0, 0, 0xc0, 8, 7, 6, 5, 4, 3, 2, 1])
    }

    @Test func anUnreadIndexListIsAnErrorNotAnEmptySave() {
        #expect(throws: KVMError.msrIndexListLacks(VCPUState.requiredMSRs)) { try VCPUState.msrsToSave(from: []) }
        // A list cut short after the SYSENTER MSRs.
        let truncated = Array(RecordedMSRIndexLists.amdEPYC.indices.prefix(3))
        #expect(throws: KVMError.msrIndexListLacks([0x10, 0x277, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084, 0xc000_0102])) {
            try VCPUState.msrsToSave(from: truncated)
        }
        let error = KVMError.msrIndexListLacks([0x10, 0xc000_0081])
        #expect(error.description.contains("0x10, 0xc0000081"))
    }

    @Test func hostileMSRPartsAreRefused() {
        let one = VCPUState.encodeMSRs([VCPUState.MSR(index: 0x10, value: 1)])
        #expect(throws: VCPUStateError.self) { try VCPUState.decodeMSRs([]) }
        #expect(throws: VCPUStateError.self) { try VCPUState.decodeMSRs(ArraySlice(one.dropLast())) }
        #expect(throws: VCPUStateError.tooManyMSRs(65)) { try VCPUState.decodeMSRs([65, 0]) }
        let twice = VCPUState.encodeMSRs([VCPUState.MSR(index: 0x10, value: 1), VCPUState.MSR(index: 0x10, value: 2)])
        #expect(throws: VCPUStateError.invalid("MSR 0x10 appears twice")) { try VCPUState.decodeMSRs(ArraySlice(twice)) }
        #expect(throws: Never.self) { try VCPUState.decodeMSRs(ArraySlice(VCPUState.encodeMSRs([]))) }
    }
}
