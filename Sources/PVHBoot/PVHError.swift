/// Why a kernel could not be loaded.  Each names the field or range at fault.
public enum PVHError: Error, Equatable, Sendable, CustomStringConvertible {
    case notELF
    case unsupportedELF(String)
    case truncated(String)
    case noPVHNote
    case segmentOutsideRAM(index: Int, start: UInt64, byteCount: UInt64)
    case segmentsOverlap(Int, Int)
    case segmentOverlapsBootData(index: Int)
    case entryOutsideSegments(UInt64)
    case commandLineTooLong(Int, limit: Int)
    case initrdTooLarge(Int, space: UInt64)

    public var description: String {
        switch self {
        case .notELF: "not an ELF file (bad magic)"
        case .unsupportedELF(let why): "unsupported ELF: \(why)"
        case .truncated(let what): "ELF file truncated: \(what) lies beyond the end of the file"
        case .noPVHNote: "ELF has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); Ferry boots PVH kernels only"
        case .segmentOutsideRAM(let index, let start, let byteCount):
            "segment \(index) [0x\(String(start, radix: 16)), +0x\(String(byteCount, radix: 16))) lies outside guest RAM"
        case .segmentsOverlap(let a, let b): "segments \(a) and \(b) overlap"
        case .segmentOverlapsBootData(let index): "segment \(index) overlaps the boot data at 0x0-0xffff"
        case .entryOutsideSegments(let entry): "PVH entry 0x\(String(entry, radix: 16)) is not inside a loaded segment"
        case .commandLineTooLong(let length, let limit): "command line is \(length) bytes; the limit is \(limit)"
        case .initrdTooLarge(let size, let space): "initrd of \(size) bytes does not fit in the \(space) bytes of RAM left below 3 GiB"
        }
    }
}
