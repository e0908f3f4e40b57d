import CLinuxUAPI
import Glibc
import GuestMemory
import Migration

/// Zero-copy sends on one socket: how many `sendmsg(MSG_ZEROCOPY)` calls queued
/// data (each is one completion id to the kernel), how many of those the kernel
/// has reported complete, and whether any of them was copied after all.
struct ZeroCopyCounts {
    var enabled = false
    var queued = 0
    var completed = 0
    var copiedSinceFlush = false
}

/// `MSG_ZEROCOPY` (Linux 4.14; Documentation/networking/msg_zerocopy.rst):
/// the kernel pins the pages and sends from them, then reports each finished
/// send on the socket's error queue.  TCP only; over loopback the kernel
/// copies anyway and says so.
extension DescriptorChannel {
    /// Corresponds to `setsockopt(SOL_SOCKET, SO_ZEROCOPY, 1)`, QEMU's `zero-copy-send`.
    ///
    /// - Throws: ``ChannelError/zeroCopyUnavailable(errno:)``: `EOPNOTSUPP` on a Unix
    ///   socket, `ENOTSOCK` on a file or pipe.
    public func enableZeroCopy() throws(ChannelError) {
        let result = CLinuxUAPI_enable_zerocopy(descriptor)
        guard result == 0 else { throw .zeroCopyUnavailable(errno: -result) }
        zeroCopy.withLock { $0.enabled = true }
    }

    /// Sends every segment of `list` with `sendmsg(MSG_ZEROCOPY)`, resuming partial
    /// sends.  When the kernel refuses more outstanding sends (`ENOBUFS`: its
    /// per-socket notification memory or the locked-memory limit), waits for the
    /// completions so far and retries.  The list's memory must stay valid until
    /// ``flushZeroCopy()``.
    ///
    /// - Throws: `.system` with `EINVAL` before ``enableZeroCopy()`` (the kernel would
    ///   silently copy, and no completion would ever come to flush).
    public func writeZeroCopy(_ list: borrowing GatherList) throws(ChannelError) {
        guard zeroCopy.withLock({ $0.enabled }) else {
            throw .system("zero-copy write to the migration channel before enableZeroCopy()", errno: EINVAL)
        }
        let outcome = unsafe list.withIOVectors { vectors in
            // SAFETY: the vectors stay valid for the whole transfer, inside `withIOVectors`.
            unsafe Self.transferAll(vectors) { pointer, count in
                while true {
                    let result = unsafe CLinuxUAPI_sendmsg_zerocopy(descriptor, pointer, count)      // retries EINTR itself
                    if result > 0 { zeroCopy.withLock { $0.queued += 1 } }
                    guard result == -Int(ENOBUFS), zeroCopy.withLock({ $0.completed < $0.queued }) else { return result }
                    let drained = awaitCompletions()
                    if drained < 0 { return Int(drained) }
                }
            }
        }
        switch outcome {
        case .complete: return
        case .ended: throw .system("zero-copy write to the migration channel", errno: EPIPE)
        case .failed(let errno): throw .system("zero-copy write to the migration channel", errno: errno)
        }
    }

    /// Waits until the kernel has completed every zero-copy send so far, so their
    /// memory may change or go.  Returns whether any send completed since the
    /// previous flush was copied (`SO_EE_CODE_ZEROCOPY_COPIED`).
    ///
    /// - Throws: `.system` with the socket's error (a reset peer) or `EPIPE` if the
    ///   channel was shut down before all completions came.
    public func flushZeroCopy() throws(ChannelError) -> Bool {
        let result = awaitCompletions()
        guard result == 0 else { throw .system("flush of zero-copy sends on the migration channel", errno: -result) }
        return zeroCopy.withLock { counts in
            defer { counts.copiedSinceFlush = false }
            return counts.copiedSinceFlush
        }
    }

    /// Takes completion notifications off the error queue until every queued send
    /// has one: 0, or -errno.  Ids are the kernel's 32-bit counter, so ranges wrap.
    func awaitCompletions() -> Int32 {
        while zeroCopy.withLock({ $0.completed < $0.queued }) {
            var first: UInt32 = 0, last: UInt32 = 0, copied: Int32 = 0
            // SAFETY: the three out-pointers are locals that outlive the call.
            let result = unsafe CLinuxUAPI_zerocopy_completion(descriptor, -1, &first, &last, &copied)
            if result < 0 { return result }
            guard result == 1 else { continue }
            zeroCopy.withLock { counts in
                counts.completed += Int(last &- first) + 1
                if copied != 0 { counts.copiedSinceFlush = true }
            }
        }
        return 0
    }
}
