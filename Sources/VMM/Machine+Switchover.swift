import Foundation
import QMP

extension Machine {
    /// Stops the vCPUs for a migration's switchover (run state `finish-migrate`,
    /// STOP if it was running).  Returns whether the guest was running.
    func stopForSwitchover() -> Bool {
        let previous = runState.withLock { state -> RunState in
            defer { state = .finishMigrate }
            return state
        }
        switchoverPreviousState.withLock { $0 = previous }
        guard previous == .running else { return false }
        control.pause { kickAll() }
        emit("STOP")
        return true
    }

    /// Whether the guest ran before the switchover stopped it (the "global" section).
    var wasRunningBeforeSwitchover: Bool { switchoverPreviousState.withLock { $0 } == .running }

    /// A failed or cancelled switchover: back to the state before it, running again if it ran.
    func resumeAfterFailedSwitchover(wasRunning: Bool) {
        let previous = switchoverPreviousState.withLock { $0 } ?? (wasRunning ? .running : .paused)
        runState.withLock { $0 = previous }
        guard previous == .running else { return }
        tracker.state.withLock { $0.forgetLastBeats() }
        control.resume()
        emit("RESUME")
    }

    /// Auto-converge: vCPUs sleep `percent` of each 10 ms timeslice; a ticker
    /// thread kicks them out of KVM_RUN so they can.
    func setThrottle(percent: Int) {
        control.throttlePercent.store(max(0, min(percent, 99)), ordering: .relaxed)
        guard percent > 0, !control.throttleTickerRunning.exchange(true, ordering: .relaxed) else { return }
        let thread = Thread { [self] in
            defer { control.throttleTickerRunning.store(false, ordering: .relaxed) }
            while !isFinished {
                let percent = control.throttlePercent.load(ordering: .relaxed)
                guard percent > 0 else { return }
                // Run a timeslice, then kick: the vCPU sleeps its share on the way out.
                Thread.sleep(forTimeInterval: 0.010 * 100 / Double(100 - percent))
                kickAll()
            }
        }
        thread.name = "ferry-throttle"
        thread.start()
    }

    /// The throttle now in force, 0 when none.
    var throttlePercent: Int { control.throttlePercent.load(ordering: .relaxed) }
}

extension Machine {
    /// An incoming migration failed and the machine must not run: as QEMU does,
    /// stop for good; `incomingFailure` tells the CLI why (it exits 1).
    public func failIncoming(_ reason: String) {
        incomingFailureStorage.withLock { $0 = reason }
        end()
    }

    /// Why an incoming migration failed, if it did.
    public var incomingFailure: String? { incomingFailureStorage.withLock { $0 } }
}
