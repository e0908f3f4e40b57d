import Foundation
import Synchronization

/// Parks and releases vCPU threads.  `pause()` returns only once every vCPU
/// thread is parked outside KVM_RUN, so the guest is really frozen.
final class RunControl: @unchecked Sendable {
    // @unchecked: every field is guarded by `condition`.
    enum Desired { case run, pause, terminate }

    private let condition = NSCondition()
    private var desired: Desired = .pause
    private var parked = 0
    private var exited = 0
    private let vcpuCount: Int

    /// Auto-converge's throttle: the percentage of time each vCPU sleeps (0: none).
    let throttlePercent = Atomic<Int>(0)
    /// Whether a thread is kicking the vCPUs for the throttle.
    let throttleTickerRunning = Atomic<Bool>(false)
    /// QEMU's CPU_THROTTLE_TIMESLICE: a throttled vCPU runs in slices of this length.
    static let throttleTimeslice: Duration = .milliseconds(10)

    init(vcpuCount: Int) { self.vcpuCount = vcpuCount }

    /// How long a vCPU sleeps after each throttle kick: timeslice × p / (100 − p).
    var throttleSleep: Duration? {
        let percent = throttlePercent.load(ordering: .relaxed)
        guard percent > 0 else { return nil }
        return Self.throttleTimeslice * Double(percent) / Double(100 - percent)
    }

    /// Called by a vCPU thread before each KVM_RUN: blocks while paused;
    /// `false` means the thread should exit.
    func shouldRun() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while desired == .pause {
            parked += 1
            condition.broadcast()
            condition.wait()
            parked -= 1
        }
        return desired == .run
    }

    func threadExited() {
        condition.lock()
        exited += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Requests a pause; `kick` makes running vCPUs leave KVM_RUN.  Waits for all to park (or exit).
    func pause(kick: () -> Void) {
        condition.lock()
        if desired != .terminate { desired = .pause }      // an ending machine's vCPUs exit rather than park
        condition.broadcast()       // a vCPU sleeping out its throttle share parks at once
        condition.unlock()
        kick()
        condition.lock()
        while parked + exited < vcpuCount { condition.wait() }
        condition.unlock()
    }

    /// A throttled vCPU's sleep: `duration`, cut short by a pause or terminate.
    func sleepThrottled(for duration: Duration) {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let deadline = Date(timeIntervalSinceNow: seconds)
        condition.lock()
        defer { condition.unlock() }
        while desired == .run, condition.wait(until: deadline) {}
    }

    func resume() {
        condition.lock()
        if desired != .terminate { desired = .run }
        condition.broadcast()
        condition.unlock()
    }

    /// Stops every vCPU thread for good and waits for them to exit.
    func terminate(kick: () -> Void) {
        condition.lock()
        desired = .terminate
        condition.broadcast()
        condition.unlock()
        kick()
        condition.lock()
        while exited < vcpuCount { condition.wait() }
        condition.unlock()
    }
}
