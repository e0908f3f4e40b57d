import CLinuxUAPI
import Glibc
import Migration

/// A `ChannelDoorbell` over an eventfd, which `DescriptorChannel` polls beside
/// its socket: a ring wakes the waiting thread at once.
final class EventDoorbell: ChannelDoorbell {
    let descriptor: Int32

    init() throws(ChannelError) {
        descriptor = try Transport.check(CLinuxUAPI_eventfd(), "create an eventfd")
    }

    deinit { _ = Glibc.close(descriptor) }

    func ring() { CLinuxUAPI_eventfd_signal(descriptor) }

    func wait(timeout: Duration) -> Bool { CLinuxUAPI_eventfd_wait(descriptor, timeout.pollMilliseconds) > 0 }
}
