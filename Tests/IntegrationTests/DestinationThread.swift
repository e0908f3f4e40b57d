import Foundation
import Synchronization
import Testing
import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// A `MigrationDestination` receiving into `blocks` (known to start zero) on
/// its own thread, from the first connection to `listener`.
final class DestinationThread: Sendable {
    let result = Mutex<Result<Void, MigrationError>?>(nil)

    init(listener: IncomingListener, configuration: MigrationConfiguration, blocks: [RAMBlock], devices: [any Migratable]) {
        let thread = Thread { [self] in
            do {
                let destination = MigrationDestination(
                    channel: try listener.accept(), configuration: configuration,
                    ram: RAMMigration(blocks: blocks, tracker: nil, destinationStartsZero: true),
                    devices: devices, onStatus: { _ in })
                try destination.run()
                self.result.withLock { $0 = .success(()) }
            } catch let error as MigrationError {
                self.result.withLock { $0 = .failure(error) }
            } catch {
                self.result.withLock { $0 = .failure(.state("\(error)")) }
            }
        }
        thread.start()
    }

    /// Waits up to 30 s for the destination to finish, recording an issue if it
    /// failed (unless the test expects it to).  Returns whether it finished.
    @discardableResult
    func wait(recordingFailure: Bool = true) -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while result.withLock({ $0 }) == nil && ContinuousClock.now < deadline { usleep(1000) }
        if recordingFailure, case .failure(let error)? = result.withLock({ $0 }) { Issue.record("destination: \(error)") }
        return result.withLock { $0 } != nil
    }
}
