/// The parts of an ELF file a PVH boot needs: loadable segments and the PVH
/// entry point.  Every offset and size is checked against the file.
public struct ELFImage: Sendable {
    public struct Segment: Equatable, Sendable {
        public let physicalAddress: UInt64
        public let fileOffset: Int
        public let fileSize: Int
        public let memorySize: UInt64
    }

    public let segments: [Segment]
    /// The 32-bit entry from `XEN_ELFNOTE_PHYS32_ENTRY`.
    public let pvhEntry: UInt32

    /// Largest ELF accepted: far above any PVH kernel, and bounds what a hostile header can make us allocate.
    static let maximumSegments = 64
    static let xenNoteType: UInt32 = 18

    public init(_ bytes: [UInt8]) throws(PVHError) {
        let reader = ByteReader(bytes)
        guard bytes.count >= 16, bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] else { throw .notELF }
        let is64: Bool
        switch bytes[4] {
        case 1: is64 = false
        case 2: is64 = true
        default: throw .unsupportedELF("class \(bytes[4])")
        }
        guard bytes[5] == 1 else { throw .unsupportedELF("not little-endian") }
        guard try reader.u16(18) == (is64 ? 62 : 3) else { throw .unsupportedELF("machine is not x86") }
        let phoff = is64 ? try reader.u64(32) : UInt64(try reader.u32(28))
        let phentsize = Int(try reader.u16(is64 ? 54 : 42))
        let phnum = Int(try reader.u16(is64 ? 56 : 44))
        guard phentsize == (is64 ? 56 : 32) else { throw .unsupportedELF("program header size \(phentsize)") }
        guard phnum <= Self.maximumSegments else { throw .unsupportedELF("\(phnum) program headers") }

        var segments: [Segment] = []
        var entry: UInt32?
        for index in 0..<phnum {
            let (base, overflow) = phoff.addingReportingOverflow(UInt64(index * phentsize))
            guard !overflow, base <= UInt64(bytes.count) else { throw .truncated("program header \(index)") }
            let at = Int(base)
            let type = try reader.u32(at)
            let offset, paddr, filesz, memsz: UInt64
            if is64 {
                (offset, paddr, filesz, memsz) = (try reader.u64(at + 8), try reader.u64(at + 24), try reader.u64(at + 32), try reader.u64(at + 40))
            } else {
                (offset, paddr, filesz, memsz) = (UInt64(try reader.u32(at + 4)), UInt64(try reader.u32(at + 12)),
                                                  UInt64(try reader.u32(at + 16)), UInt64(try reader.u32(at + 20)))
            }
            guard offset <= UInt64(bytes.count), filesz <= UInt64(bytes.count) - offset else {
                throw .truncated("segment \(index)")
            }
            switch type {
            case 1 where memsz > 0:     // PT_LOAD
                guard filesz <= memsz else { throw .unsupportedELF("segment \(index) has file size above memory size") }
                segments.append(Segment(physicalAddress: paddr, fileOffset: Int(offset), fileSize: Int(filesz), memorySize: memsz))
            case 4:                     // PT_NOTE
                if entry == nil { entry = try Self.pvhEntry(in: reader, from: Int(offset), count: Int(filesz)) }
            default: break
            }
        }
        guard let entry else { throw .noPVHNote }
        guard !segments.isEmpty else { throw .unsupportedELF("no loadable segment") }
        self.segments = segments
        self.pvhEntry = entry
    }

    /// Walks ELF notes (4-byte aligned) for Xen's PHYS32_ENTRY.
    static func pvhEntry(in reader: ByteReader, from start: Int, count: Int) throws(PVHError) -> UInt32? {
        var at = start
        let end = start + count
        while at + 12 <= end {
            let namesz = Int(try reader.u32(at)), descsz = Int(try reader.u32(at + 4)), type = try reader.u32(at + 8)
            let nameAt = at + 12
            let descAt = nameAt + (namesz + 3) & ~3
            guard namesz <= count, descsz <= count, descAt + descsz <= end else { throw .truncated("ELF note") }
            if type == xenNoteType, namesz == 4, reader.bytes[nameAt..<nameAt + 3] == [0x58, 0x65, 0x6e], descsz >= 4 {
                return try reader.u32(descAt)
            }
            at = descAt + (descsz + 3) & ~3
        }
        return nil
    }
}

/// Bounds-checked little-endian reads.
struct ByteReader {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func u16(_ at: Int) throws(PVHError) -> UInt16 { UInt16(try value(at, 2)) }
    func u32(_ at: Int) throws(PVHError) -> UInt32 { UInt32(try value(at, 4)) }
    func u64(_ at: Int) throws(PVHError) -> UInt64 { try value(at, 8) }

    private func value(_ at: Int, _ count: Int) throws(PVHError) -> UInt64 {
        guard at >= 0, at <= bytes.count - count else { throw .truncated("header field at \(at)") }
        var result: UInt64 = 0
        for i in (0..<count).reversed() { result = result << 8 | UInt64(bytes[at + i]) }
        return result
    }
}
