import CLinuxUAPI
import Glibc
import Migration

/// An eventfd: a `ChannelDoorbell` that `DescriptorChannel` polls beside its
/// socket (a ring wakes the waiting thread at once), and what a connect in
/// progress polls to be cancelled (`ConnectCancellation`).
final class EventDoorbell: ChannelDoorbell {
    let descriptor: Int32

    init() throws(ChannelError) {
        descriptor = try Transport.check(CLinuxUAPI_eventfd(), "create an eventfd")
    }

    deinit { _ = Glibc.close(descriptor) }

    func ring() { CLinuxUAPI_eventfd_signal(descriptor) }

    func wait(timeout: Duration) -> Bool {
        guard CLinuxUAPI_wait_readable(descriptor, timeout.pollMilliseconds) > 0 else { return false }
        CLinuxUAPI_eventfd_reset(descriptor)
        return true
    }
}
