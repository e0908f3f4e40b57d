import Analysis
import ArgumentParser
import Foundation
import Migration
import Transport

/// `ferry analyze FILE`: what a migration file holds, and whether every
/// checksum in it matches (QEMU's scripts/analyze-migration.py, for Ferry's
/// stream and mapped-ram files).  The checks are the `Analysis` target's; this only formats.
struct AnalyzeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "analyze",
        abstract: "Describe a migration file and check every checksum in it.",
        discussion: """
            Takes a stream file (a plain 'migrate' to file:PATH) or a mapped-ram file (capability \
            mapped-ram), told apart by their magic. Prints its channel, configuration, frames, pages \
            per RAM block and device-state sections; for a mapped-ram file also the header, each \
            block's regions, present and zero pages, and every present page checked against its checksum.
            Exit status: 0 when everything checks, 1 at the first structural error (bad magic, \
            truncated, overlapping regions, ...), 2 when it decoded but pages or frames are corrupt (listed).
            """)

    @Argument(help: "The migration file.")
    var file: String

    @Option(help: ArgumentHelp("Where the migration data starts in the file, as in file:PATH,offset=N.", valueName: "bytes"))
    var offset: UInt64 = 0

    @Flag(help: "Print one JSON object (keys in docs/analyze.md).")
    var json = false

    @Flag(help: "Do not read a mapped-ram file's pages (the header, metadata and device state are still checked).")
    var quick = false

    func run() throws {
        let opened: MigrationFile
        do { opened = try MigrationFile.open(path: file, writing: false, direct: false, base: offset) } catch {
            throw FerryFailure.runtime("analyze: \(error)")
        }
        defer { opened.close() }
        var analysis: FileAnalysis
        do {
            let input = try AnalysisInput(file: opened, allocatedBytes: try? opened.allocatedBytes())
            analysis = MigrationFileAnalyzer.analyze(input, checkPages: !quick)
        } catch { throw FerryFailure.runtime("analyze: \(error)") }
        analysis.path = file
        analysis.offset = offset
        if json {
            print(try AnalysisJSON.encode(analysis))
        } else {
            print(AnalysisText(analysis).lines.joined(separator: "\n"))
        }
        if let error = analysis.error {
            FileHandle.standardError.write(Data("ferry: error: \(file): \(error)\n".utf8))
        } else if analysis.status == .corrupt {
            FileHandle.standardError.write(Data("ferry: \(file): \(analysis.corruptionCount) corrupt page(s) or frame(s)\n".utf8))
        }
        if analysis.status != .ok { throw ExitCode(analysis.status.exitStatus) }
    }
}

/// The `--json` form: one object, keys in kebab-case as QMP's (`mapped-ram`, `file-bytes`).
enum AnalysisJSON {
    static func encode(_ analysis: FileAnalysis) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .custom { path in Key(kebab(path.last?.stringValue ?? "")) }
        return String(decoding: try encoder.encode(analysis), as: UTF8.self)
    }

    struct Key: CodingKey {
        let stringValue: String
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    /// `migrationID` -> `migration-id`, `mappedRAM` -> `mapped-ram`, `ramBytes` -> `ram-bytes`.
    static func kebab(_ name: String) -> String {
        let characters = Array(name)
        var out = ""
        for (i, c) in characters.enumerated() {
            if c.isUppercase && i > 0 {
                let previous = characters[i - 1]
                let nextIsLower = i + 1 < characters.count && characters[i + 1].isLowercase
                if previous.isLowercase || previous.isNumber || (previous.isUppercase && nextIsLower) { out.append("-") }
            }
            out.append(contentsOf: c.lowercased())
        }
        return out
    }
}
