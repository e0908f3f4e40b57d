import ArgumentParser
import EmbeddedGuest
import Migration
import Foundation
import QMP
import QMPSocket
import VMM

/// `ferry run`: run a VM until `quit` (QMP), the guest stops, or --run-for elapses.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a virtual machine.",
        discussion: """
            Without --kernel, runs Ferry's embedded test guest: it dirties its working set at the \
            --workload rate, verifies every page before rewriting it, and prints a heartbeat line \
            'HB <seq> t=<ms> pages=<n> err=<n>' on COM1 about every 100 ms.
            Exit status: 0 after quit or --run-for, 1 on a runtime failure or failed verification, \
            2 on bad input.
            """)

    @OptionGroup var machine: MachineOptions

    @Option(name: [.long, .customLong("serial", withSingleDash: true)],
            help: "COM1 output: stdio (input is read from stdin too), file:PATH or none.")
    var serial: String = "stdio"

    @Option(name: [.long, .customLong("qmp", withSingleDash: true)],
            help: ArgumentHelp("QMP control socket, e.g. unix:/tmp/ferry.qmp (QEMU's ,server=on,wait=off accepted).", valueName: "unix:PATH"))
    var qmp: String?

    @Option(name: [.long, .customLong("monitor", withSingleDash: true)],
            help: ArgumentHelp("QEMU's human monitor (HMP) on the terminal: stdio. Needs --serial file:PATH or none (stdin feeds one of them).", valueName: "stdio"))
    var monitor: String?

    @Flag(help: "Print guest progress (heartbeats per second, pages written, verify failures) and any outgoing migration's progress to stderr every second.")
    var progress = false

    @Option(help: ArgumentHelp("Quit after this many seconds (default: run until QMP quit).", valueName: "seconds"))
    var runFor: Double?

    @Option(name: [.long, .customLong("incoming", withSingleDash: true)],
            help: ArgumentHelp("Receive the VM from a migration instead of booting: tcp:HOST:PORT, unix:PATH, fd:N or file:PATH to listen on or read, or 'defer' to wait for QMP migrate-incoming. The machine options (memory, cpus) must match the source's.", valueName: "uri"))
    var incoming: String?

    @Flag(name: [.customShort("S"), .long],
          help: "Do not start the guest: wait for QMP 'cont' (with --incoming: stay paused after the migration loads).")
    var paused = false

    @Flag(help: "On exit, verify every guest page on the host against the header the guest wrote; exit 1 on a failure.")
    var verifyOnExit = false

    func run() async throws {
        let configuration = try machine.configuration()
        let serialOption = try SerialOption(parsing: serial)
        let qmpPath = try qmp.map(Self.parseQMP)
        if let monitor {
            guard monitor == "stdio" else { throw FerryFailure.badInput("invalid --monitor '\(monitor)' (expected stdio)") }
            if case .stdio = serialOption {
                throw FerryFailure.badInput("--monitor stdio needs --serial file:PATH or none: stdin cannot feed both")
            }
        }
        if let runFor, !(runFor > 0 && runFor.isFinite) { throw FerryFailure.badInput("--run-for must be a positive number of seconds") }
        let forwarder = QMPEventForwarder()
        if let incoming, incoming != "defer" {
            let uri: MigrationURI
            do { uri = try MigrationURI(parsing: incoming) } catch { throw FerryFailure.badInput("invalid --incoming: \(error)") }
            // No QMP client can have named a descriptor yet: a name is for migrate-incoming after `--incoming defer`.
            if case .fdName(let name) = uri {
                throw FerryFailure.badInput("invalid --incoming: fd:\(name) names a descriptor passed with QMP getfd, which only "
                                            + "migrate-incoming can use (--incoming defer); here fd: takes a descriptor number")
            }
        }
        let serialOutput = try serialOption.makeOutput()
        let vm = try makeMachine(configuration, incoming: incoming != nil, serialOutput: serialOutput.write,
                                 events: { forwarder.forward($0) })
        var server: QMPServer?
        // QMP clients and the terminal monitor take turns: one command at a time, as on one monitor.
        let commands = NSLock()
        if let qmpPath {
            do {
                server = try await QMPServer.start(path: qmpPath, version: Machine.version,
                                                   execute: { command, descriptor in commands.withLock { vm.execute(command, descriptor: descriptor) } },
                                                   afterReply: { vm.afterReply(to: $0) })
            } catch {
                throw FerryFailure.runtime("cannot listen on QMP socket '\(qmpPath)': \(error)")
            }
            forwarder.attach(server!)
        }
        vm.start(paused: paused)
        if let incoming, incoming != "defer" {
            do throws(QMPError) { try vm.startIncoming(from: incoming, autostart: !paused, onFailure: { vm.failIncoming($0) }) } catch {
                throw FerryFailure.runtime(error.desc)
            }
        }
        if case .stdio = serialOption { SerialInput.forward(to: vm.serial) }
        if monitor != nil { HumanMonitor.start(vm, commands: commands) }
        let reporter = progress ? ProgressReporter(machine: vm) : nil
        reporter?.start()
        if let runFor {
            let deadline = ContinuousClock.now + .milliseconds(Int(runFor * 1000))
            while !vm.isFinished && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
            if !vm.isFinished { vm.quit() }
        } else {
            await vm.waitUntilFinished()
        }
        reporter?.stop()
        await server?.shutdown()
        // The guest may have stopped in the middle of a line: Ferry's last lines start on their own.
        serialOutput.console?.endLine()
        try report(vm)
    }

    private func report(_ vm: Machine) throws {
        if let failure = vm.incomingFailure { throw FerryFailure.runtime(failure) }
        let progress = vm.progress
        if let vector = progress.panicVector { throw FerryFailure.runtime("guest panicked with exception \(vector)") }
        guard verifyOnExit else { return }
        let result = PageVerifier.verify(vm.memory)
        FileHandle.standardError.write(Data("ferry: verify: \(result); guest-reported verify failures: \(progress.verifyErrors)\n".utf8))
        if result.failureCount > 0 || progress.verifyErrors > 0 { throw FerryFailure.runtime("guest memory failed verification") }
    }

    /// `unix:PATH`, optionally with QEMU's `,server=on,wait=off` (or `,server,nowait`) suffixes.
    static func parseQMP(_ text: String) throws -> String {
        guard text.hasPrefix("unix:") else { throw FerryFailure.badInput("invalid --qmp '\(text)' (expected unix:PATH)") }
        let parts = text.dropFirst(5).split(separator: ",", omittingEmptySubsequences: false)
        guard let path = parts.first, !path.isEmpty else { throw FerryFailure.badInput("--qmp unix: needs a socket path") }
        for option in parts.dropFirst() where !["server", "server=on", "nowait", "wait=off"].contains(option) {
            throw FerryFailure.badInput("unsupported --qmp option '\(option)'")
        }
        return String(path)
    }
}
