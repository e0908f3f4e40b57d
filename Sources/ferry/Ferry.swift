import ArgumentParser
import Foundation

/// `ferry`: a micro-VMM on KVM with live migration.
@main
struct Ferry: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferry",
        abstract: "A micro-VMM on Linux KVM with live migration.",
        discussion: """
            Runs a virtual machine with Ferry's embedded test guest (or a PVH ELF kernel), \
            controlled over a QMP socket as QEMU is.
            """,
        subcommands: [RunCommand.self, DemoCommand.self, GuestCommand.self, AnalyzeCommand.self],
        defaultSubcommand: nil)

    /// Bad input exits with status 2 and one error line; help exits 0.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)          // --help, --version: ArgumentParser prints them
            }
            if let exitCode = error as? ExitCode { Foundation.exit(exitCode.rawValue) }
            let message = (error as? FerryFailure)?.message ?? Self.message(for: error)
            FileHandle.standardError.write(Data("ferry: error: \(message)\n".utf8))
            Foundation.exit((error as? FerryFailure)?.status ?? 2)
        }
    }
}

/// A failure to report as one line with a chosen exit status (2: bad input, 1: runtime).
struct FerryFailure: Error {
    let message: String
    let status: Int32

    static func badInput(_ message: String) -> FerryFailure { FerryFailure(message: message, status: 2) }
    static func runtime(_ message: String) -> FerryFailure { FerryFailure(message: message, status: 1) }
}
