import Foundation
import HostThreads
import QMP

extension Machine {
    /// Stops the vCPUs for a migration's switchover (run state `finish-migrate`,
    /// STOP if it was running).  Returns whether the guest was running.
    ///
    /// The vCPUs are parked whatever the run state said: a `stop` or a guest
    /// that stopped itself may have changed the state before its vCPUs parked,
    /// and the final dirty-log sync must not run while one still writes.
    func stopForSwitchover() -> Bool {
        let previous = stopping.withLock { _ -> RunState in
            let previous = runState.withLock { state -> RunState in
                defer { state = .finishMigrate }
                return state
            }
            control.pause { kickAll() }
            return previous
        }
        switchoverPreviousState.withLock { $0 = previous }
        guard previous == .running else { return false }
        emit("STOP")
        return true
    }

    /// Whether the guest ran before the switchover stopped it (the "global" section).
    var wasRunningBeforeSwitchover: Bool { switchoverPreviousState.withLock { $0 } == .running }

    /// A failed or cancelled switchover: back to the state before it, running again if it ran.
    func resumeAfterFailedSwitchover(wasRunning: Bool) {
        let previous = switchoverPreviousState.withLock { $0 } ?? (wasRunning ? .running : .paused)
        stopping.withLock { _ in
            runState.withLock { $0 = previous }
            guard previous == .running else { return }
            tracker.state.withLock { $0.forgetLastBeats() }
            control.resume()
        }
        if previous == .running { emit("RESUME") }
    }

    /// Auto-converge: vCPUs sleep `percent` of each 10 ms timeslice; a ticker
    /// thread kicks them out of KVM_RUN so they can.
    func setThrottle(percent: Int) {
        // Sequentially consistent, as the leaving ticker's re-check is: one of the two sees the other.
        control.throttlePercent.store(max(0, min(percent, 99)), ordering: .sequentiallyConsistent)
        if percent > 0 { startThrottleTicker() }
    }

    /// Starts the ticker unless one runs.  A ticker that saw 0 and is leaving
    /// checks again after it lowered its flag: a throttle set in between found
    /// the flag still up and started none, so the leaving ticker carries on.
    private func startThrottleTicker() {
        guard !control.throttleTickerRunning.exchange(true, ordering: .acquiringAndReleasing) else { return }
        HostThread.start("ferry-throttle") { [self] in
            while true {
                while !isFinished, control.throttlePercent.load(ordering: .relaxed) > 0 {
                    let percent = control.throttlePercent.load(ordering: .relaxed)
                    // Run a timeslice, then kick: the vCPU sleeps its share on the way out.
                    Thread.sleep(forTimeInterval: 0.010 * 100 / Double(100 - max(1, min(percent, 99))))
                    kickAll()
                }
                control.throttleTickerRunning.store(false, ordering: .sequentiallyConsistent)
                guard !isFinished, control.throttlePercent.load(ordering: .sequentiallyConsistent) > 0,
                      !control.throttleTickerRunning.exchange(true, ordering: .sequentiallyConsistent) else { return }
            }
        }
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
