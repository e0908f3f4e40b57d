import Migration
import MigrationProtocol

/// `ferry analyze`'s logic (the command only formats): tells a stream file from
/// a mapped-ram file by its magic and checks it with the production decoders.
public enum MigrationFileAnalyzer {
    /// Analyzes `input`; with `checkPages` false (`--quick`), a mapped-ram file's
    /// pages are not read (its header, metadata and device state still are).
    /// Never throws: the report's `status` and `error` say how it ended.
    public static func analyze(_ input: AnalysisInput, checkPages: Bool = true) -> FileAnalysis {
        var result = FileAnalysis()
        result.fileBytes = input.length
        result.allocatedBytes = input.allocatedBytes
        do throws(AnalysisStop) {
            let magic = StreamHeader.magic.count
            guard input.length >= UInt64(magic) else {
                throw AnalysisStop("the file is \(input.length) bytes: too short to be a Ferry migration file")
            }
            let prefix: [UInt8]
            do { prefix = try input.read(magic, at: 0) } catch { throw AnalysisStop(error.description) }
            if prefix == StreamHeader.magic {
                result.kind = .stream
                var stream = StreamAnalyzer(mappedRAM: false, base: 0)
                defer { result.stream = stream.report }
                try stream.run(FileRegionChannel(input, start: 0, end: input.length))
            } else if MappedRAMHeader.hasMagic(prefix) {
                result.kind = .mappedRAM
                var file = MappedRAMAnalyzer(input: input, checkPages: checkPages)
                defer { result.mappedRAM = file.report }
                try file.run()
            } else {
                let shown = prefix.map { (32...126).contains($0) ? String(UnicodeScalar($0)) : "." }.joined()
                throw AnalysisStop("not a Ferry migration file (bad magic '\(shown)': a stream starts with 'FERRYMIG', a mapped-ram file with 'FERRYMRF')")
            }
        } catch {
            result.error = error.message
        }
        result.status = result.error != nil ? .error : result.corruptionCount > 0 ? .corrupt : .ok
        return result
    }
}
