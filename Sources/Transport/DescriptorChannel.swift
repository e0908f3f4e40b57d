import CLinuxUAPI
import Glibc
import GuestMemory
import Migration
import Synchronization

/// A migration channel over one file descriptor: a connected socket, a file,
/// or a descriptor handed over with `fd:N`.  Closes it once.
public final class DescriptorChannel: ZeroCopyChannel {
    let descriptor: Int32
    public let hasReturnPath: Bool
    let closed = Mutex(false)
    /// Set by `limitInactivity`: a read that waits this long fails with `.inactive`,
    /// unless a channel sharing `activity` received something meanwhile.
    let inactivity = Mutex<(limit: Duration?, activity: ChannelActivity?)>((nil, nil))
    /// Zero-copy sends queued and completed (DescriptorChannel+ZeroCopy.swift).
    let zeroCopy = Mutex(ZeroCopyCounts())
    /// Set by `limitBursts`: a gathered write leaves in pieces of at most this many bytes (0: whole).
    let burst = Atomic<Int>(0)
    /// Set by `limitPacing`: the socket is paced (`pushUnsent` leaves it to TCP's pacing timer).
    let paced = Atomic<Bool>(false)
    /// Whether the descriptor is a TCP socket, whose large reads wait for their bytes whole (`readWhole`).
    let isTCP: Bool
    /// The socket's receive low-water mark as last set (`SO_RCVLOWAT`; 1 is the kernel's default).
    let receiveMark = Atomic<Int>(1)
    /// A read of at least this many bytes from a TCP socket waits until they are all there.
    static let wholeReadBytes = 64 << 10
    /// ... and waits for at most this many at a time: a 2 MiB page is read in
    /// four parts.  Read whole, postcopy's requested 2 MiB pages waited longer
    /// (request p99 28.8-31.3 ms in 7 runs, 26.9-28.8 in parts in 4) and the
    /// machine spent more CPU (15.8-19.0 CPU-s in 5 runs, 14.6-16.0 in parts).
    static let wholeReadMost = 512 << 10
    /// How long such a read waits for them before it takes what is there.  The
    /// kernel wakes it sooner when the socket's receive buffer or window is full;
    /// this bounds any case it does not.
    static let wholeReadWait: Duration = .milliseconds(20)

    /// Adopts `descriptor`; `returnPath` is whether the other side can answer on it.
    public init(adopting descriptor: Int32, returnPath: Bool) {
        CLinuxUAPI_ignore_sigpipe()
        self.descriptor = descriptor
        self.hasReturnPath = returnPath
        isTCP = CLinuxUAPI_socket_is_tcp(descriptor) == 1
    }

    deinit { close() }

    public func write(_ bytes: [UInt8]) throws(ChannelError) {
        var written = 0
        while written < bytes.count {
            let result = unsafe bytes.withUnsafeBytes { raw in
                // SAFETY: the range [written, count) lies inside the array.
                unsafe CLinuxUAPI_write(descriptor, raw.baseAddress! + written, raw.count - written)
            }
            guard result > 0 else { throw writeError(result == 0 ? EPIPE : Int32(-result)) }
            written += result
        }
    }

    public func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        precondition(offset >= 0 && count >= 0 && offset + count <= buffer.count)
        guard count > 0 else { return 0 }
        if isTCP, count >= Self.wholeReadBytes, let got = try readWhole(count, into: &buffer, at: offset) { return got }
        markReceive(1)
        let result = unsafe buffer.withUnsafeMutableBytes { raw in
            awaitingArrival {
                // SAFETY: the precondition keeps [offset, offset + count) inside the buffer.
                unsafe CLinuxUAPI_read(descriptor, raw.baseAddress! + offset, count)     // retries EINTR itself
            }
        }
        if result >= 0 { return result }
        throw readError(Int32(-result))
    }

    /// A large read from a TCP socket wakes once, when all `count` bytes (at
    /// most `wholeReadMost` and a quarter of the receive buffer) are there, or
    /// the kernel's receive buffer or window is full, not at each train of
    /// packets: the receive low-water mark is set to it (`SO_RCVLOWAT`), the
    /// socket polled, then what it holds read without waiting.  A 2 MiB page on
    /// a 1 Gbit/s link otherwise woke its reader about 60 times, each wake-up
    /// taking the socket's lock against the packets arriving on the other CPU.
    /// Polled, not read: a blocking read copies what is there, then waits for
    /// the mark's whole count more (the kernel wakes a reader when the bytes it
    /// holds reach the mark, whatever the reader took already).  Nil when the
    /// buffer is still small or nothing came within `wholeReadWait`: the caller
    /// reads as usual.
    private func readWhole(_ count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int? {
        // At most a quarter of the receive buffer: TCP's window, about half of it, then
        // holds the whole mark, so the sender is never held for a window update that only
        // a read would send (on a fresh socket a read waited out `wholeReadWait` so).
        // A buffer still small reads as usual; reading grows it (TCP's autotuning).
        let room = Int(CLinuxUAPI_socket_receive_buffer(descriptor)) / 4
        let mark = min(count, Self.wholeReadMost, room)
        guard mark >= Self.wholeReadBytes else { return nil }
        markReceive(mark)
        let ready = CLinuxUAPI_wait_readable(descriptor, Self.wholeReadWait.pollMilliseconds)
        guard ready >= 0 else { throw .system("poll on the migration channel", errno: -ready) }
        let result = unsafe buffer.withUnsafeMutableBytes { raw in
            // SAFETY: the caller's precondition keeps [offset, offset + count) inside the buffer.
            unsafe CLinuxUAPI_read_nowait(descriptor, raw.baseAddress! + offset, count)
        }
        if result == -Int(EAGAIN) { return nil }
        guard result >= 0 else { throw readError(Int32(-result)) }
        if result > 0, let activity = inactivity.withLock({ $0.activity }) { activity.add(result) }
        return result
    }

    /// Sets the socket's receive low-water mark to `bytes` unless it is there
    /// already (the kernel caps it at half the largest receive buffer).  Only
    /// `readWhole` raises it, on TCP sockets: lowering it elsewhere costs a
    /// syscall only after that.
    private func markReceive(_ bytes: Int) {
        let mark = min(bytes, Int(Int32.max))
        guard receiveMark.exchange(mark, ordering: .relaxed) != mark else { return }
        _ = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_receive_lowat(descriptor, Int32(mark)) }
    }

    /// Writes every segment of `list` with `writev`: guest pages go from their
    /// mapping to the socket without a copy here.  Resumes partial writes
    /// mid-segment, at most `CLINUXUAPI_IOV_MAX` segments per call.
    public func write(_ list: borrowing GatherList) throws(ChannelError) {
        let burst = burst.load(ordering: .relaxed)
        let outcome = unsafe list.withIOVectors { vectors in
            // SAFETY: the vectors stay valid for the whole transfer, inside `withIOVectors`.
            unsafe Self.transferAll(vectors) { vectors, count in
                burst > 0
                    ? unsafe CLinuxUAPI_write_burst(descriptor, vectors, count, burst)      // retries EINTR itself
                    : unsafe CLinuxUAPI_writev(descriptor, vectors, count)
            }
        }
        switch outcome {
        case .complete: return
        case .ended: throw .system("write to the migration channel", errno: EPIPE)
        case .failed(let errno): throw writeError(errno)
        }
    }

    /// Fills `list` with exactly `list.byteCount` bytes with `readv`, straight into
    /// guest memory; `.endOfStream` if the stream ends first, `.inactive` as `read` does.
    public func read(into list: borrowing ScatterList) throws(ChannelError) {
        let outcome = unsafe list.withIOVectors { vectors in
            // SAFETY: the vectors stay valid for the whole transfer, inside `withIOVectors`.
            unsafe Self.transferAll(vectors) { vectors, count in
                // Read as it comes (not `readWhole`): precopy's pages go straight into guest memory,
                // fresh on the destination, and copying each part as it arrives overlaps that first
                // touch with the rest's arrival (over loopback, waiting for each 1 MiB frame whole
                // moved a 256 MiB working set in 382-496 ms against 380-434, 3 runs each).  The
                // mark a large read left is lowered first: a blocking read under it would wait for
                // the mark's count beyond what it took.
                markReceive(1)
                return awaitingArrival { unsafe CLinuxUAPI_readv(descriptor, vectors, count) }       // retries EINTR itself
            }
        }
        switch outcome {
        case .complete: return
        case .ended: throw .endOfStream
        case .failed(let errno): throw readError(errno)
        }
    }

    /// A failed read: `.inactive` if it waited out the inactivity limit (the receive timeout's EAGAIN).
    func readError(_ errno: Int32) -> ChannelError {
        if errno == EAGAIN, let limit = inactivity.withLock({ $0.limit }) { return .inactive(limit) }
        return .system("read from the migration channel", errno: errno)
    }

    /// Makes a read that waits `limit` for its first byte fail with `.inactive`
    /// (the socket's receive timeout; `nil` waits forever).  With `activity`
    /// shared by a migration's channels, a read whose wait timed out while
    /// another of them received waits again: the limit is on the migration
    /// falling silent, not one channel.  Sockets only: a file's read never waits.
    ///
    /// A write that waits as long for room fails too (the send timeout): on a
    /// destination's channel that is the return path, and a source that never
    /// reads it would otherwise hold the writing thread, and the load's failure
    /// that waits for it, for ever.
    public func limitInactivity(_ limit: Duration?, sharing activity: ChannelActivity? = nil) {
        guard CLinuxUAPI_set_receive_timeout(descriptor, limit?.pollMilliseconds ?? 0) == 0 else { return }
        _ = CLinuxUAPI_set_send_timeout(descriptor, limit?.pollMilliseconds ?? 0)
        inactivity.withLock { $0 = (limit, limit == nil ? nil : activity) }
    }

    /// A failed write: with an inactivity limit, EAGAIN is its send timeout.
    func writeError(_ errno: Int32) -> ChannelError {
        if errno == EAGAIN, let limit = inactivity.withLock({ $0.limit }) {
            return .system("write to the migration channel: the other side took nothing for \(limit) (x-inactivity-limit)", errno: errno)
        }
        return .system("write to the migration channel", errno: errno)
    }

    /// Runs `read` (bytes read, or -errno) and counts what it read in the shared
    /// activity; a timeout while another channel received is waited again.
    func awaitingArrival(_ read: () -> Int) -> Int {
        guard let activity = inactivity.withLock({ $0.activity }) else { return read() }
        while true {
            let before = activity.bytes
            let result = read()
            if result > 0 { activity.add(result) }
            guard result == -Int(EAGAIN), activity.bytes != before else { return result }
        }
    }

    /// While the socket holds bytes unsent (`SIOCOUTQNSD`) and nothing in
    /// flight (all it holds is unsent: `SIOCOUTQ` equal), pushes them
    /// (`TCP_NODELAY` set again) every 100 µs, up to `limit`.  When the local
    /// qdisc drops a segment (a shaped link's queue full of other traffic),
    /// TCP with nothing in flight retries it only from its probe timer, at
    /// least 200 ms later; a push retries it now.  With segments in flight,
    /// their acknowledgements send the rest: nothing to do.
    @discardableResult
    public func pushUnsent(within limit: Duration) -> Bool {
        // Paced, a socket holds what is unsent until its pacing timer, nothing in
        // flight meanwhile: that timer sends it, and so what a local queue dropped.
        guard !paced.load(ordering: .relaxed) else { return true }
        let deadline = ContinuousClock.now + limit
        while true {
            let (unsent, queued) = closed.withLock { done -> (Int32, Int32) in
                done ? (0, 0) : (CLinuxUAPI_socket_unsent(descriptor), CLinuxUAPI_socket_queued(descriptor))
            }
            guard unsent > 0 else { return true }           // sent, closed, or not TCP (an error)
            guard queued == unsent else { return true }     // in flight: TCP goes on by itself
            guard ContinuousClock.now < deadline else { return false }
            _ = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_push(descriptor) }
            usleep(100)
        }
    }

    /// `TCP_NOTSENT_LOWAT`: the socket polls writable, and a write goes ahead,
    /// only while it holds less than about half of `bytes` unsent (ignored by
    /// channels that are not TCP).
    public func limitUnsent(_ bytes: Int) {
        _ = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_limit_unsent(descriptor, Int32(clamping: bytes)) }
    }

    /// Gathered writes leave in pieces of at most `bytes` (nil: whole), each
    /// kept apart by the kernel (`CLinuxUAPI_write_burst`), so a paced socket
    /// sends trains of that size instead of 64 KiB ones.
    public func limitBursts(_ bytes: Int?) {
        burst.store(max(0, bytes ?? 0), ordering: .relaxed)
    }

    /// `TCP_RTO_MIN_US` (Linux 6.15; ignored before, and by channels that are not TCP).
    public func shortenRetransmitWait(to least: Duration) {
        _ = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_least_retransmit_wait(descriptor, least.socketMicroseconds) }
    }

    /// `SO_MAX_PACING_RATE`: TCP spreads what it sends to at most `bytesPerSecond`
    /// (ignored by channels that are not TCP).
    public func limitPacing(_ bytesPerSecond: UInt64?) {
        paced.store(bytesPerSecond != nil, ordering: .relaxed)
        _ = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_max_pacing_rate(descriptor, bytesPerSecond ?? UInt64.max) }
    }

    /// TCP's latest delivery-rate sample (`TCP_INFO`), unless it was
    /// application-limited; nil for channels that are not TCP.
    public func deliveryRate() -> UInt64? {
        let rate = closed.withLock { done in done ? 0 : CLinuxUAPI_socket_delivery_rate(descriptor) }
        return rate > 0 ? UInt64(rate) : nil
    }

    /// TCP's delivered segments times the MSS (`TCP_INFO`); nil for channels
    /// that are not TCP, or once closed.
    public func deliveredBytes() -> UInt64? {
        let delivered = closed.withLock { done in done ? -1 : CLinuxUAPI_socket_delivered_bytes(descriptor) }
        return delivered >= 0 ? UInt64(delivered) : nil
    }

    /// What the socket holds written and not acknowledged (`SIOCOUTQ`); nil
    /// for descriptors that are not sockets, or once closed.
    public func queuedBytes() -> UInt64? {
        let queued = closed.withLock { done in done ? -1 : CLinuxUAPI_socket_queued(descriptor) }
        return queued >= 0 ? UInt64(queued) : nil
    }

    /// TCP's smoothed round trip less the least one it has seen (`TCP_INFO`);
    /// nil for descriptors that are not TCP sockets, or once closed.
    public func queueDelay() -> Duration? {
        var smoothed: UInt32 = 0, least: UInt32 = 0
        let result = closed.withLock { done in
            // SAFETY: both pointers are to locals that outlive the call.
            done ? -1 : unsafe CLinuxUAPI_socket_round_trips(descriptor, &smoothed, &least)
        }
        guard result == 0 else { return nil }
        return .microseconds(Int64(smoothed) - Int64(min(least, smoothed)))
    }

    public func waitWritable(timeout: Duration) throws(ChannelError) -> Bool {
        let result = closed.withLock { done in done ? 1 : CLinuxUAPI_wait_writable(descriptor, timeout.pollMilliseconds) }
        guard result >= 0 else { throw .system("poll on the migration channel", errno: -result) }
        return result > 0
    }

    public func makeDoorbell() -> (any ChannelDoorbell)? { try? EventDoorbell() }

    public func waitWritable(timeout: Duration, orRung doorbell: (any ChannelDoorbell)?) throws(ChannelError) -> Bool {
        guard let event = doorbell as? EventDoorbell else { return try waitWritable(timeout: timeout) }
        let result = closed.withLock { done in
            done ? 1 : CLinuxUAPI_wait_writable_or_event(descriptor, event.descriptor, timeout.pollMilliseconds)
        }
        guard result >= 0 else { throw .system("poll on the migration channel", errno: -result) }
        return result & 1 != 0
    }

    public func waitReadable(timeout: Duration) throws(ChannelError) -> Bool {
        markReceive(1)
        let result = CLinuxUAPI_wait_readable(descriptor, timeout.pollMilliseconds)
        guard result >= 0 else { throw .system("poll on the migration channel", errno: -result) }
        return result > 0
    }

    /// Shuts the socket down unless it is closed already (its number may belong to another file by now).
    public func shutdown() {
        closed.withLock { done in if !done { _ = CLinuxUAPI_shutdown(descriptor) } }
    }

    public func close() {
        closed.withLock { done in
            if !done { _ = Glibc.close(descriptor) }
            done = true
        }
    }
}

/// How a vectored transfer ended: every byte moved, the stream ended (a call moved 0), or a call failed.
enum VectorOutcome: Equatable { case complete, ended, failed(errno: Int32) }

extension DescriptorChannel {
    /// Moves every byte `source` describes with `step`, which gets at most
    /// `CLINUXUAPI_IOV_MAX` vectors and returns the bytes it moved or -errno.  A
    /// partial transfer resumes where it stopped, mid-vector if need be.
    static func transferAll(_ source: UnsafeBufferPointer<iovec>, _ step: (UnsafePointer<iovec>, Int32) -> Int) -> VectorOutcome {
        // SAFETY (the `unsafe` on lengths and counts below): reading and writing an
        // `iovec`'s fields touches only the array, never the memory it points to.
        var vectors = unsafe Array(source)
        var first = 0
        while unsafe first < vectors.count {
            if unsafe vectors[first].iov_len == 0 { first += 1; continue }
            let count = min(unsafe vectors.count - first, Int(CLINUXUAPI_IOV_MAX))
            let result = unsafe vectors.withUnsafeBufferPointer { all in
                // SAFETY: [first, first + count) lies inside the array, pinned for the call.
                unsafe step(all.baseAddress! + first, Int32(count))
            }
            if result < 0 { return .failed(errno: Int32(-result)) }
            if result == 0 { return .ended }
            var moved = result
            while moved > 0 {
                let length = unsafe vectors[first].iov_len
                if moved >= length {
                    moved -= length
                    first += 1
                } else {
                    // SAFETY: `moved` is less than this vector's length, so the new base stays inside it.
                    unsafe vectors[first].iov_base = vectors[first].iov_base! + moved
                    unsafe vectors[first].iov_len = length - moved
                    moved = 0
                }
            }
        }
        return .complete
    }
}

extension Duration {
    /// Whole milliseconds for `poll` and socket timeouts, clamped to `Int32` (negative: 0).
    var pollMilliseconds: Int32 {
        let milliseconds = Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
        return Int32(max(0, min(Double(Int32.max), milliseconds)))
    }

    /// Whole microseconds for socket options, clamped to `Int32` (negative: 0).
    var socketMicroseconds: Int32 {
        let microseconds = Double(components.seconds) * 1e6 + Double(components.attoseconds) / 1e12
        return Int32(max(0, min(Double(Int32.max), microseconds)))
    }
}
