import GuestMemory

/// A channel that can send guest RAM without copying it into the kernel
/// (QEMU's `zero-copy-send` capability; Linux `MSG_ZEROCOPY` on TCP).
///
/// The kernel reads the pages while it transmits them, after the send call
/// has returned, so a caller must keep every range it sent mapped until
/// ``flushZeroCopy()`` returns: guest RAM only (it stays mapped for the whole
/// migration); headers and other short-lived bytes go with the normal `write`.
/// A page the guest writes before the flush may leave with the new bytes, which
/// is what dirty tracking expects: the page is dirty again and is sent again.
public protocol ZeroCopyChannel: ByteChannel {
    /// Turns zero-copy sends on for this channel.
    ///
    /// Corresponds to `setsockopt(SOL_SOCKET, SO_ZEROCOPY)`.
    /// - Throws: ``ChannelError/zeroCopyUnavailable(errno:)`` if the channel cannot
    ///   (a Unix socket, a file, a kernel without `MSG_ZEROCOPY`).
    func enableZeroCopy() throws(ChannelError)
    /// Queues every byte of `list` for sending without a copy, in order, after
    /// whatever was written before.  The memory must stay valid until the next flush.
    func writeZeroCopy(_ list: borrowing GatherList) throws(ChannelError)
    /// Waits until every zero-copy send so far is complete (the kernel no longer
    /// reads its memory).  Returns whether any send completed since the previous
    /// flush was copied by the kernel after all (loopback, some NICs): such
    /// sends cost what a normal write costs.
    func flushZeroCopy() throws(ChannelError) -> Bool
}

extension ChannelError {
    /// QEMU's words when `zero-copy-send` cannot be had on a channel.
    public static func zeroCopyUnavailable(errno: Int32) -> ChannelError {
        .system("Requested Zero Copy feature is not available", errno: errno)
    }
}
