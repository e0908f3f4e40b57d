import ArgumentParser
import EmbeddedGuest
import Foundation

/// `ferry guest export`: write the embedded test guest as a PVH ELF file.
struct GuestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "Work with the embedded test guest.",
        subcommands: [Export.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the embedded test guest as a PVH ELF kernel.",
            discussion: """
                The file boots under 'ferry run --kernel FILE' and under QEMU's microvm \
                (-kernel FILE). Its command line sets the workload: cpus=N tsc-khz=KHZ \
                dirty-rate=BYTES|max working-set=BYTES (K/M/G suffixes).
                """)

        @Option(help: "Where to write the ELF file.")
        var output: String

        func run() throws {
            guard FileManager.default.createFile(atPath: output, contents: Data(EmbeddedGuest.elfImage)) else {
                throw FerryFailure.badInput("cannot write '\(output)'")
            }
            print("wrote \(EmbeddedGuest.elfImage.count) bytes to \(output)")
        }
    }
}
