import ArgumentParser
import EmbeddedGuest
import Foundation
import VMM

/// `ferry guest export`: write the embedded test guest as a PVH ELF file.
struct GuestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guest",
        abstract: "Work with the embedded test guest.",
        subcommands: [Export.self, CommandLine.self])

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the embedded test guest as a PVH ELF kernel.",
            discussion: """
                The file boots under 'ferry run --kernel FILE' and under QEMU's microvm \
                (-kernel FILE). Its command line sets the workload: cpus=N tsc-khz=KHZ \
                dirty-rate=BYTES|max working-set=BYTES (K/M/G suffixes) access=random.
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

    struct CommandLine: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cmdline",
            abstract: "Print the kernel command line Ferry gives the embedded guest.",
            discussion: "Pass it to another VMM (QEMU's -append) to run the exported guest exactly as Ferry runs it, with this host's TSC frequency.")

        @Option(help: "Number of vCPUs (1-32).")
        var cpus: Int = 1

        @Option(help: ArgumentHelp("The workload, as for 'ferry run --workload'.", valueName: "spec"))
        var workload: String = "idle"

        func run() throws {
            guard MachineConfiguration.cpuRange.contains(cpus) else {
                throw FerryFailure.badInput(MachineError.invalidCPUCount(cpus).description)
            }
            let spec: WorkloadSpec
            do { spec = try WorkloadSpec(parsing: workload) } catch { throw FerryFailure.badInput("invalid --workload: \(error)") }
            let khz: UInt32
            do { khz = try HostFacts.guestTSCKHz() } catch { throw FerryFailure.runtime(error.description) }
            print(EmbeddedGuest.commandLine(workload: spec, cpus: cpus, tscKHz: khz))
        }
    }
}
