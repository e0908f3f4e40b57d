import CLinuxUAPI

/// The calling thread's scheduling, for threads that wait on guest memory.
public enum HostThread {
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
