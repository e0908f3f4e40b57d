import ArgumentParser
import EmbeddedGuest
import Foundation
import VMM

/// `ferry demo`: the embedded guest dirtying memory, with progress, then a host-side verification.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the embedded test guest for a few seconds and show its progress.",
        discussion: "Starts a 1 GiB, 2-vCPU guest dirtying 256 MiB at 64 MiB/s, prints its progress every second, then pauses it and verifies every page on the host.")

    @Option(help: "How long to run, in seconds.")
    var seconds: Double = 5

    func run() async throws {
        guard seconds > 0, seconds.isFinite else { throw FerryFailure.badInput("--seconds must be positive") }
        let workload = WorkloadSpec(dirtyRate: .bytesPerSecond(64 << 20), workingSet: 256 << 20)
        let configuration = MachineConfiguration(memoryBytes: 1 << 30, cpus: 2, boot: .embedded(workload))
        print("ferry demo: 1 GiB guest, 2 vCPUs, workload \(workload); serial console below\n")
        let vm = try makeMachine(configuration, serialOutput: { bytes in
            FileHandle.standardOutput.write(Data("  guest| ".utf8 + bytes))
        })
        let started = ContinuousClock.now
        vm.start()
        let reporter = ProgressReporter(machine: vm)
        reporter.start()
        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        reporter.stop()
        vm.pause()
        let progress = vm.progress
        let first = progress.firstHeartbeatAt.map { "\($0 - started)" } ?? "never"
        let report = PageVerifier.verify(vm.memory)
        vm.quit()
        print("""

            first heartbeat after \(first); \(progress.heartbeats) heartbeats, \(progress.pagesWritten) pages written, \
            \(progress.timerTicks) timer ticks
            guest verifier: \(progress.verifyErrors) failures; host verifier: \(report)
            """)
        if report.failureCount > 0 || progress.verifyErrors > 0 || progress.heartbeats == 0 {
            throw FerryFailure.runtime("demo failed: the guest did not run cleanly")
        }
    }
}
