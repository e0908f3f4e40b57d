import EmbeddedGuest
import GuestMemory
import PVHBoot
import Testing

@Suite struct PVHLoaderTests {
    let memory = try! GuestMemoryMap.pc(byteCount: 64 << 20, backend: .anon)

    @Test func loadsTheEmbeddedGuest() throws {
        let entry = try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: "cpus=1", initrd: [1, 2, 3], into: memory)
        #expect(entry.startInfoAddress == 0x6000)
        #expect(try memory.readUInt32(at: GuestAddress(0x6000)) == 0x336e_c578)
        // The image header sits at the load address.
        #expect(try memory.read(at: GuestAddress(0x100000), count: 8) == Array("FERRYGST".utf8))
        // Module 0 is the initrd, at the top of RAM.
        let moduleAddress = try memory.readUInt64(at: GuestAddress(0x6800))
        #expect(try memory.read(at: GuestAddress(moduleAddress), count: 3) == [1, 2, 3])
    }

    @Test func rejectsWhatIsNotAPVHKernel() {
        #expect(throws: PVHError.notELF) { try PVHLoader.load(kernel: Array("hello".utf8), commandLine: "", initrd: nil, into: memory) }
        var noNote = EmbeddedGuest.elfImage
        // Turn the PT_NOTE program header (the second) into PT_NULL.
        noNote[64 + 56] = 0
        #expect(throws: PVHError.noPVHNote) { try PVHLoader.load(kernel: noNote, commandLine: "", initrd: nil, into: memory) }
        #expect(throws: PVHError.self) { try PVHLoader.load(kernel: Array(EmbeddedGuest.elfImage.prefix(100)), commandLine: "", initrd: nil, into: memory) }
    }

    @Test func rejectsSegmentsOutsideRAMBeforeWritingAnything() throws {
        let small = try GuestMemoryMap.pc(byteCount: 1 << 20, backend: .anon)      // ends where the kernel would load
        let error = #expect(throws: PVHError.self) {
            try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: "", initrd: nil, into: small)
        }
        guard case .segmentOutsideRAM(index: 0, start: 0x100000, _)? = error else {
            Issue.record("unexpected \(String(describing: error))")
            return
        }
        #expect(try small.readUInt32(at: GuestAddress(0x6000)) == 0, "nothing written")
    }

    @Test func rejectsOversizedCommandLineAndInitrd() {
        #expect(throws: PVHError.commandLineTooLong(5000, limit: 4095)) {
            try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: String(repeating: "x", count: 5000), initrd: nil, into: memory)
        }
        #expect(throws: PVHError.self) {
            try PVHLoader.load(kernel: EmbeddedGuest.elfImage, commandLine: "", initrd: [UInt8](repeating: 0, count: 70 << 20), into: memory)
        }
    }
}
