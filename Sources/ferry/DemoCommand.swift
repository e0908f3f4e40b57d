import ArgumentParser
import EmbeddedGuest
import Foundation
import Migration
import Synchronization
import VMM

/// `ferry demo`: the embedded guest migrated live between two Ferry processes.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Migrate a running guest live between two Ferry processes, with progress.",
        discussion: """
            Starts a 1 GiB, 2-vCPU guest dirtying 256 MiB at 64 MiB/s in this process and a second \
            'ferry run --incoming' process as the destination, runs the guest for --seconds, migrates \
            it over a Unix socket while printing the migration's progress, lets it run on the \
            destination, then has the destination verify every page.  Exit status 0 only if the \
            migration completed and both the guest's and the host's verifiers found nothing wrong.
            """)

    @Option(help: "How long the guest runs before the migration, in seconds.")
    var seconds: Double = 3

    @Option(help: ArgumentHelp("Bandwidth limit for the migration, bytes per second with K, M or G suffix.", valueName: "rate"))
    var maxBandwidth: String = "2G"

    func run() async throws {
        guard seconds > 0, seconds.isFinite else { throw FerryFailure.badInput("--seconds must be positive") }
        guard let bandwidth = ByteSize.parse(maxBandwidth), bandwidth > 0 else {
            throw FerryFailure.badInput("invalid --max-bandwidth '\(maxBandwidth)'")
        }
        let workload = WorkloadSpec(dirtyRate: .bytesPerSecond(64 << 20), workingSet: 256 << 20)
        let configuration = MachineConfiguration(memoryBytes: 1 << 30, cpus: 2, boot: .embedded(workload))
        let base = "/tmp/ferry-demo-\(getpid())"
        let (migrationSocket, qmpSocket) = (base + ".migration", base + ".qmp")
        say("ferry demo: 1 GiB guest, 2 vCPUs, workload \(workload)\n")

        let destination = try DemoDestination.launch(memory: "1G", cpus: 2, incoming: "unix:" + migrationSocket, qmp: qmpSocket)
        let console = LinePrefixer(prefix: "  src| ")
        let source = try makeMachine(configuration, serialOutput: { console.feed($0) })
        source.start()
        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        try await destination.waitUntilListening(migrationSocket)

        say("\nmigrating to \(migrationSocket) (max-bandwidth \(maxBandwidth)B/s, downtime-limit 300 ms)")
        _ = source.execute(.migrateSetParameters(["max-bandwidth": .int(Int64(bandwidth))]))
        if case .failure(let error) = source.execute(.migrate(uri: "unix:" + migrationSocket)) {
            destination.terminate()
            throw FerryFailure.runtime("migration did not start: \(error.desc)")
        }
        var info = source.outgoingMigration ?? MigrationInfo()
        while !(info.status.isFinished && info.status != .none) {
            try await Task.sleep(for: .milliseconds(100))
            info = source.outgoingMigration ?? info
            say(Self.progressLine(info))
        }
        let sourceProgress = source.progress
        source.quit()
        guard info.status == .completed else {
            destination.terminate()
            throw FerryFailure.runtime("migration \(info.status.rawValue): \(info.errorDescription ?? "")")
        }
        say("""
            migration completed in \(info.totalTime) ms, downtime \(info.downtime ?? 0) ms, \
            \(info.transferredBytes >> 20) MiB sent in \(info.ram.dirtySyncCount) passes
            source guest: \(sourceProgress.heartbeats) heartbeats, \(sourceProgress.verifyErrors) verify failures

            """)
        try await Task.sleep(for: .seconds(2))
        let report = try await destination.quitAndCollect(qmp: qmpSocket)
        say("\ndestination: \(report.verifyLine)")
        guard report.status == 0 else { throw FerryFailure.runtime("the destination did not finish cleanly (exit \(report.status))") }
        say("the guest moved between two processes and every page verified")
    }

    static func progressLine(_ info: MigrationInfo) -> String {
        let remaining = info.ram.remainingPages * info.ram.pageSize
        return String(format: "  migration %-10@ %7.1f MiB sent  %7.1f MiB remaining  %7.0f Mbit/s  dirty %6llu pages/s  pass %llu",
                      info.status.rawValue, Double(info.transferredBytes) / 1048576, Double(remaining) / 1048576,
                      info.bandwidth * 8 / 1e6, info.ram.dirtyPagesRate, info.ram.dirtySyncCount)
    }
}

/// The destination `ferry run --incoming` child process of the demo.
struct DemoDestination: Sendable {
    /// Bytes of output read so far (to tell when the pipe has gone quiet).
    final class Received: Sendable {
        let count = Mutex(0)
    }

    let process: Process
    let output: Pipe
    let received: Received

    static func launch(memory: String, cpus: Int, incoming: String, qmp: String) throws -> DemoDestination {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0].contains("/")
                                    ? CommandLine.arguments[0] : "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = ["run", "-m", memory, "--cpus", String(cpus), "--incoming", incoming, "--serial", "stdio",
                             "--qmp", "unix:" + qmp, "--verify-on-exit"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        let console = LinePrefixer(prefix: "  dst| ")
        let received = Received()
        output.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if !data.isEmpty {
                console.feed(data)
                received.count.withLock { $0 += data.count }
            }
        }
        do { try process.run() } catch { throw FerryFailure.runtime("cannot start the destination process: \(error)") }
        return DemoDestination(process: process, output: output, received: received)
    }

    func waitUntilListening(_ socket: String) async throws {
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: socket) {
            guard process.isRunning else { throw FerryFailure.runtime("the destination process exited") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Sends QMP `quit` and waits for the process; its exit status and verification line.
    func quitAndCollect(qmp: String) async throws -> (status: Int32, verifyLine: String) {
        try QMPOneShot.send(["qmp_capabilities", "quit"], to: qmp)
        while process.isRunning { try await Task.sleep(for: .milliseconds(20)) }
        // Its last lines (the verification) may still be in the pipe: wait until
        // nothing more has come for 200 ms (at most 3 s), then stop reading.
        var seen = received.count.withLock { $0 }
        for _ in 0..<15 {
            try await Task.sleep(for: .milliseconds(200))
            let now = received.count.withLock { $0 }
            if now == seen { break }
            seen = now
        }
        output.fileHandleForReading.readabilityHandler = nil
        return (process.terminationStatus, process.terminationStatus == 0 ? "verified clean on exit" : "verification failed")
    }

    func terminate() {
        if process.isRunning { process.terminate() }
    }
}

/// Writes a line to stdout unbuffered, so it interleaves with the consoles in order.
func say(_ text: String) {
    FileHandle.standardOutput.write(Data((text + "\n").utf8))
}
