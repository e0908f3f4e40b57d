import Analysis
import FuzzSupport
import Glibc
import MigrationProtocol

/// libFuzzer target `mappedram`: the fuzz input is a whole mapped-ram file.
/// Its header goes through `MappedRAMHeader` (from a prefix of every length,
/// and whole), each block's metadata through `MappedRAMBlockIndex`, and then
/// the whole file through `ferry analyze`'s `MigrationFileAnalyzer` (header,
/// metadata, every present page, the device-state stream), with and without
/// the page check.
///
/// A refusal is the expected outcome for most inputs; a trap, a crash, a hang
/// or one of these disagreements is a finding:
/// - a header that decodes does not re-encode to exactly its bytes, or a block
///   index that decodes does not re-encode to its bitmap and checksum table;
/// - the analyzer stops at an error where the decoders accepted the header,
///   with no error message, or calls a file `ok` while listing corruption;
/// - the quick analysis stops at an error the full one did not.
///
/// Before that, each block's metadata checksum, the device state's frames
/// (`FrameFixer`) and the header's checksum are rewritten to match
/// (`MappedRAMFixer`), so mutations reach the checks behind them.  The seeds
/// (`--make-seeds DIR`) are compact files: metadata packed after the header and
/// page areas 4 KiB-aligned, which the decoder accepts, so a whole file with
/// its pages fits in a few tens of KB.

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    let arguments = CommandLine.arguments
    if let flag = arguments.firstIndex(of: "--make-seeds") {
        guard flag + 1 < arguments.count else { fatalError("usage: FuzzMappedRAM --make-seeds DIR") }
        MappedRAMSeeds.write(to: arguments[flag + 1])
        exit(0)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data = unsafe data, size > 0 else { return 0 }
    // SAFETY: libFuzzer hands us `size` readable bytes at `data` for the duration of this call.
    var bytes = unsafe Array(UnsafeBufferPointer(start: data, count: size))
    MappedRAMFixer.fix(&bytes)
    MappedRAMTarget.check(bytes)
    return 0
}

enum MappedRAMTarget {
    /// `FERRY_FUZZ_EXPLAIN=1 FuzzMappedRAM FILE...` prints how each input ends.
    static let explain = unsafe getenv("FERRY_FUZZ_EXPLAIN") != nil

    static func check(_ bytes: [UInt8]) {
        let fixed = MappedRAMFormat.fixedHeaderBytes
        for cut in [0, 8, 12, 20, 23, 24, fixed - 1, fixed] where cut <= bytes.count {
            _ = try? MappedRAMHeader.totalByteCount(prefix: Array(bytes.prefix(cut)))
        }
        let header = decodeHeader(bytes)
        let full = MigrationFileAnalyzer.analyze(AnalysisInput(bytes: bytes))
        let quick = MigrationFileAnalyzer.analyze(AnalysisInput(bytes: bytes), checkPages: false)
        for report in [full, quick] {
            guard (report.status == .error) == (report.error != nil) else { fatalError("status \(report.status) with error \(report.error ?? "none")") }
            guard report.status != .ok || report.corruptionCount == 0 else { fatalError("ok with \(report.corruptionCount) corruptions") }
        }
        if full.kind == .mappedRAM && full.status != .error && header == nil {
            fatalError("the analyzer accepted a header the decoder refuses")
        }
        if full.status != .error && quick.status == .error {
            fatalError("the quick analysis stopped where the full one did not: \(quick.error ?? "")")
        }
        if explain { print("\(full.kind) \(full.status): \(full.error ?? "\(full.corruptionCount) corrupt")") }
    }

    /// The header, if the decoder takes it; checks that it and each block's metadata re-encode to their bytes.
    static func decodeHeader(_ bytes: [UInt8]) -> MappedRAMHeader? {
        guard let total = try? MappedRAMHeader.totalByteCount(prefix: Array(bytes.prefix(MappedRAMFormat.fixedHeaderBytes))),
              total <= bytes.count,
              let header = try? MappedRAMHeader(decoding: Array(bytes.prefix(total)), fileLength: UInt64(bytes.count)) else { return nil }
        guard header.encode() == Array(bytes.prefix(total)) else { fatalError("a decoded header does not re-encode to its bytes") }
        for entry in header.entries {
            // Inside the file: the decoder checked the regions.
            let bitmap = Array(bytes[Int(entry.bitmapOffset)..<Int(entry.bitmapOffset + entry.bitmapBytes)])
            let sums = Array(bytes[Int(entry.checksumsOffset)..<Int(entry.checksumsOffset + entry.checksumBytes)])
            guard let index = try? MappedRAMBlockIndex(bitmap: bitmap, checksums: sums, entry: entry) else { continue }
            guard index.encode() == (bitmap, sums), index.pageCount == entry.pageCount else {
                fatalError("block '\(entry.name)': a decoded index does not re-encode to its metadata")
            }
        }
        return header
    }
}
