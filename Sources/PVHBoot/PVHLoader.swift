import GuestMemory

/// Loads a PVH ELF kernel into guest RAM and writes its `hvm_start_info`
/// (version 1: command line, memory map, the initrd as module 0), exactly as
/// the PVH boot ABI describes.  Validates everything before writing a byte.
public enum PVHLoader {
    /// Where the boot data lives: page 0 stays clear, all of it below 64 KiB.
    public static let startInfoAddress: UInt64 = 0x6000
    static let memoryMapAddress: UInt64 = 0x6100
    static let moduleListAddress: UInt64 = 0x6800
    static let commandLineAddress: UInt64 = 0x7000
    static let bootDataEnd: UInt64 = 0x10000
    /// Bytes of command line, excluding the NUL: what fits between 0x7000 and 0x8000.
    public static let commandLineLimit = 4095
    static let startInfoMagic: UInt32 = 0x336e_c578

    /// What the VMM needs to start the boot vCPU(s).
    public struct Entry: Equatable, Sendable {
        /// 32-bit protected-mode entry point.
        public let entryPoint: UInt32
        /// Guest physical address of `hvm_start_info`, for %ebx.
        public let startInfoAddress: UInt32
    }

    public static func load(kernel: [UInt8], commandLine: String, initrd: [UInt8]?, into memory: GuestMemoryMap) throws(PVHError) -> Entry {
        let elf = try ELFImage(kernel)
        let ram = memory.ramRanges
        let commandLineBytes = Array(commandLine.utf8)
        guard commandLineBytes.count <= commandLineLimit else { throw .commandLineTooLong(commandLineBytes.count, limit: commandLineLimit) }

        // Validate every segment: inside one RAM range, off the boot data, not overlapping another.
        for (index, segment) in elf.segments.enumerated() {
            guard let range = GuestRange(start: GuestAddress(segment.physicalAddress), byteCount: segment.memorySize),
                  ram.contains(where: { $0.contains(range.start, length: range.byteCount) }) else {
                throw .segmentOutsideRAM(index: index, start: segment.physicalAddress, byteCount: segment.memorySize)
            }
            guard range.start.rawValue >= bootDataEnd else { throw .segmentOverlapsBootData(index: index) }
            for (other, earlier) in elf.segments.enumerated().prefix(index) {
                let otherEnd = earlier.physicalAddress + earlier.memorySize
                if range.start.rawValue < otherEnd && earlier.physicalAddress < range.end.rawValue { throw .segmentsOverlap(other, index) }
            }
        }
        guard elf.segments.contains(where: { UInt64(elf.pvhEntry) >= $0.physicalAddress && UInt64(elf.pvhEntry) < $0.physicalAddress + $0.memorySize }) else {
            throw .entryOutsideSegments(UInt64(elf.pvhEntry))
        }
        let kernelEnd = elf.segments.map { $0.physicalAddress + $0.memorySize }.max()!
        let initrdAddress = try initrd.map { bytes throws(PVHError) in try placeInitrd(bytes.count, above: kernelEnd, ram: ram) }

        // All checks passed: write.
        for segment in elf.segments {
            let data = Array(kernel[segment.fileOffset..<segment.fileOffset + segment.fileSize])
            try! memory.write(data, at: GuestAddress(segment.physicalAddress))
            let zeros = segment.memorySize - UInt64(segment.fileSize)
            if zeros > 0 { try! memory.write([UInt8](repeating: 0, count: Int(zeros)), at: GuestAddress(segment.physicalAddress + UInt64(segment.fileSize))) }
        }
        try! memory.write(commandLineBytes + [0], at: GuestAddress(commandLineAddress))
        var map = ByteWriter()
        for range in ram { map.u64(range.start.rawValue); map.u64(range.byteCount); map.u32(1); map.u32(0) }
        try! memory.write(map.bytes, at: GuestAddress(memoryMapAddress))
        if let initrd, let initrdAddress {
            try! memory.write(initrd, at: GuestAddress(initrdAddress))
            var module = ByteWriter()       // hvm_modlist_entry
            module.u64(initrdAddress); module.u64(UInt64(initrd.count)); module.u64(0); module.u64(0)
            try! memory.write(module.bytes, at: GuestAddress(moduleListAddress))
        }
        var info = ByteWriter()             // hvm_start_info, version 1
        info.u32(startInfoMagic); info.u32(1); info.u32(0); info.u32(initrd == nil ? 0 : 1)
        info.u64(initrd == nil ? 0 : moduleListAddress); info.u64(commandLineAddress); info.u64(0)
        info.u64(memoryMapAddress); info.u32(UInt32(ram.count)); info.u32(0)
        try! memory.write(info.bytes, at: GuestAddress(startInfoAddress))
        return Entry(entryPoint: elf.pvhEntry, startInfoAddress: UInt32(startInfoAddress))
    }

    /// The initrd goes page-aligned at the top of RAM below 3 GiB, above the kernel.
    static func placeInitrd(_ size: Int, above kernelEnd: UInt64, ram: [GuestRange]) throws(PVHError) -> UInt64 {
        let low = ram.first { $0.start.rawValue == 0 }
        let top = low?.end.rawValue ?? 0
        let floor = (max(kernelEnd, bootDataEnd) + 0xfff) & ~0xfff
        let space = top > floor ? top - floor : 0
        guard UInt64(size) <= space else { throw .initrdTooLarge(size, space: space) }
        return (top - UInt64(size)) & ~0xfff
    }
}

/// Little-endian byte assembly for boot structures.
struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
}
