import Foundation
import HostThreads
import Migration
import Synchronization
import VMM

/// Prints one progress line a second to stderr while the guest runs.
final class ProgressReporter: Sendable {
    let machine: Machine
    private let running = Mutex(true)

    init(machine: Machine) { self.machine = machine }

    func start() {
        HostThread.start("ferry-progress") { [self] in
            let start = ContinuousClock.now
            var previous = machine.progress
            while running.withLock({ $0 }) {
                Thread.sleep(forTimeInterval: 1)
                guard running.withLock({ $0 }) else { break }
                let now = machine.progress
                var line = Self.line(elapsed: ContinuousClock.now - start, state: machine.state.rawValue,
                                     previous: previous, now: now)
                if let migration = machine.outgoingMigration, [.setup, .active, .device].contains(migration.status) {
                    line = String(line.dropLast()) + "  " + Self.migrationLine(migration) + "\n"
                }
                FileHandle.standardError.write(Data(line.utf8))
                previous = now
            }
        }
    }

    func stop() { running.withLock { $0 = false } }

    static func migrationLine(_ info: MigrationInfo) -> String {
        String(format: "migration=%@ sent=%lluMiB remaining=%lluMiB %.0fMbit/s pass=%llu", info.status.rawValue,
               info.transferredBytes >> 20, (info.ram.remainingPages * info.ram.pageSize) >> 20,
               info.bandwidth * 8 / 1e6, info.ram.dirtySyncCount)
    }

    static func line(elapsed: Duration, state: String, previous: GuestProgress, now: GuestProgress) -> String {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let beats = now.heartbeats - previous.heartbeats
        let pages = now.pagesWritten &- previous.pagesWritten
        let gap = now.maxGap.components.seconds * 1000 + now.maxGap.components.attoseconds / 1_000_000_000_000_000
        return String(format: "[%6.1fs] %@  heartbeats/s=%d  pages=%llu (+%llu/s)  verify-failures=%llu  max-gap=%lldms\n",
                      seconds, state, beats, now.pagesWritten, pages, now.verifyErrors, gap)
    }
}
