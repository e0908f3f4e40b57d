import CLinuxUAPI
import Foundation

/// Ferry's own threads: started with a name the host shows, and their scheduling.
public enum HostThread {
    /// Starts a thread that runs `body`, named `name` where the host's tools
    /// look (`top -H`, `ps -L`, `perf`, `/proc/PID/task/TID/comm`; the kernel
    /// keeps 15 bytes). Foundation's `Thread.name` alone names it only inside
    /// the process: the kernel's name would stay the starting thread's.
    public static func start(_ name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            // SAFETY: the C string lives for the call, and the kernel copies it.
            unsafe CLinuxUAPI_set_thread_name(name)
            body()
        }
        thread.name = name
        if let stackSize { thread.stackSize = stackSize }
        thread.start()
    }

    /// The nice value of threads a guest's vCPU waits on (postcopy's page
    /// faults and the pages asked for): on a host whose cores are all busy, a
    /// woken thread this far below its neighbours runs at once instead of
    /// after their time slices.
    public static let urgentNice: Int32 = -10

    /// Makes the calling thread urgent (`urgentNice`); false where the host
    /// does not allow it (no `CAP_SYS_NICE`): the thread runs on as it was.
    @discardableResult
    public static func makeUrgent() -> Bool { CLinuxUAPI_set_thread_nice(urgentNice) == 0 }
}
