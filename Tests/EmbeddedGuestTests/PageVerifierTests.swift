import EmbeddedGuest
import GuestMemory
import PVHBoot
import Testing

/// The verifier against the guest's written-page bitmap, without KVM: the
/// image is loaded into plain memory and the bitmap bits are set by hand.
@Suite struct PageVerifierTests {
    let page: UInt64 = 4096

    func loadedGuest() throws -> GuestMemoryMap {
        let memory = try GuestMemoryMap.pc(byteCount: 64 << 20, backend: .anon)
        _ = try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: "cpus=1", initrd: nil, into: memory)
        return memory
    }

    /// Sets the bitmap bit of `address`'s page, as mark_written() in workload.c does.
    func markWritten(_ address: GuestAddress, in memory: GuestMemoryMap) throws {
        let bitmap = try memory.readUInt64(at: GuestAddress(GuestABI.imageHeaderAddress + 0x20))
        let index = address.rawValue / page
        let byte = GuestAddress(bitmap + index / 8)
        var value = try memory.read(at: byte, count: 1)
        value[0] |= 1 << UInt8(index % 8)
        try memory.write(value, at: byte)
    }

    @Test func theImageHeaderPublishesABitmapCoveringRAM() throws {
        let memory = try loadedGuest()
        #expect(try memory.readUInt32(at: GuestAddress(GuestABI.imageHeaderAddress + 8)) == 3)
        #expect(try memory.readUInt64(at: GuestAddress(GuestABI.imageHeaderAddress + 0x28)) == 68 << 18)
        let bitmap = try memory.readUInt64(at: GuestAddress(GuestABI.imageHeaderAddress + 0x20))
        #expect(bitmap % page == 0 && bitmap + (68 << 15) <= GuestABI.workBase, "between the image and the work area")
        let written = try #require(GuestABI.writtenPages(in: memory))
        #expect(written.pageCount == (64 << 20) / page, "covers the guest's RAM, not the whole 68 GiB")
        #expect(written.meansInUse, "version 3: a freed page leaves the bitmap")
    }

    @Test func aRecordedPageThatReadsZeroIsLost() throws {
        let memory = try loadedGuest()
        let clean = PageVerifier.verify(memory)
        #expect(clean.failureCount == 0 && clean.checkedAgainstBitmap)
        let lost = GuestAddress(GuestABI.workBase + 7 * page)
        try markWritten(lost, in: memory)
        let report = PageVerifier.verify(memory)
        #expect(report.failures == [lost])
        #expect(report.pagesLost == 1)
        #expect(report.description.contains("1 failed, 1 of them lost"))
    }

    @Test func aValidPageTheGuestFreedIsFreeMemoryButGarbageIsStillCorrupt() throws {
        let memory = try loadedGuest()
        // A page the guest wrote (valid header and body) whose in-use bit it cleared: free memory.
        let freed = GuestAddress(GuestABI.workBase + 11 * page)
        var words = [UInt64](repeating: 0, count: 512)
        let index = freed.rawValue / page
        for i in 4..<512 { words[i] = UInt64(i) &* 0x9e37_79b9 ^ index }
        words[0] = GuestABI.pageMagic
        words[1] = index
        words[3] = words.withUnsafeBufferPointer { PageVerifier.checksum(body: Span(_unsafeElements: $0)) }
        try memory.write(words.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * $0)) } }, at: freed)
        let stray = GuestAddress(GuestABI.workBase + 13 * page)
        try memory.write([1], at: stray.advanced(by: 100)!)
        let report = PageVerifier.verify(memory)
        #expect(report.pagesFree == 1)
        #expect(report.failures == [stray], "a freed page may hold anything valid, never a torn or foreign page")
    }

    @Test func anUnrecordedPageMustBeZero() throws {
        let memory = try loadedGuest()
        let stray = GuestAddress(GuestABI.workBase + 9 * page)
        try memory.write([1], at: stray.advanced(by: 100)!)
        let report = PageVerifier.verify(memory)
        #expect(report.failures == [stray])
        #expect(report.pagesLost == 0)
    }

    @Test func withoutTheHeaderZeroPagesCountAsNeverWritten() throws {
        let memory = try GuestMemoryMap.pc(byteCount: 16 << 20, backend: .anon)
        #expect(GuestABI.writtenPages(in: memory) == nil)
        let report = PageVerifier.verify(memory)
        #expect(report.failureCount == 0 && !report.checkedAgainstBitmap)
        #expect(report.pagesChecked == Int((16 << 20) - GuestABI.workBase) / 4096)
    }

    @Test func outcomesCombineContentsAndRecord() {
        #expect(PageVerifier.outcome(of: .untouched, recorded: nil) == .neverWritten)
        #expect(PageVerifier.outcome(of: .untouched, recorded: false) == .neverWritten)
        #expect(PageVerifier.outcome(of: .untouched, recorded: true) == .lost)
        #expect(PageVerifier.outcome(of: .valid, recorded: nil) == .written)
        #expect(PageVerifier.outcome(of: .valid, recorded: true) == .written)
        #expect(PageVerifier.outcome(of: .valid, recorded: false) == .unrecorded)
        #expect(PageVerifier.outcome(of: .valid, recorded: false, freeable: true) == .free)
        #expect(PageVerifier.outcome(of: .untouched, recorded: true, freeable: true) == .lost)
        #expect(PageVerifier.outcome(of: .corrupt, recorded: true) == .corrupt)
    }

    @Test func bitsPastTheCoveredPagesAreClear() {
        let written = WrittenPages(words: [0b101, .max], pageCount: 70)
        #expect(written.contains(0) && !written.contains(1) && written.contains(2))
        #expect(written.contains(69) && !written.contains(70) && !written.contains(1 << 40))
    }

    @Test func aPerCPUAddressPastTheAddressSpaceIsNoCPUs() throws {
        let memory = try loadedGuest()
        // The guest's own words: one CPU, its per-CPU blocks 16 bytes before the end of the address space.
        try memory.write([1, 0, 0, 0], at: GuestAddress(GuestABI.imageHeaderAddress + 12))
        try memory.write([UInt8](repeating: 0xff, count: 8).enumerated().map { $0.offset == 0 ? 0xf0 : $0.element },
                         at: GuestAddress(GuestABI.imageHeaderAddress + 24))
        // Before, the address overflowed and trapped the VMM (ferry run --verify-on-exit).
        #expect(GuestABI.pagesBeingWritten(in: memory).isEmpty)
    }
}
