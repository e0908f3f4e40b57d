import CLinuxUAPI
import Glibc
import SystemPackage

/// One userfaultfd: the API handshake, registered ranges, and the ioctls that
/// resolve faults.  The only place in Ferry that calls them.  Every method is
/// one system call on a descriptor that never changes, so any thread may call
/// any of them; events are read by one thread at a time.
///
/// Addresses are host virtual addresses of mappings the caller keeps alive
/// while registered (a RAM block's `HostMapping`).
@safe public final class Userfaultfd: Sendable {
    let descriptor: Int32
    /// Wakes a `waitForEvents` blocked in poll (an eventfd).
    let interruption: Int32
    /// The features the handshake granted.
    public let features: UserfaultfdFeatures

    /// Opens a userfaultfd and makes the API handshake asking for `features`;
    /// throws `missingFeatures` naming those the kernel does not offer.
    public init(features: UserfaultfdFeatures) throws(UserfaultfdError) {
        let available = try Self.availableFeatures()
        let missing = features.subtracting(available)
        guard missing.isEmpty else { throw .missingFeatures(missing.names) }
        let fd = CLinuxUAPI_userfaultfd()
        guard fd >= 0 else { throw .open(Errno(rawValue: -fd)) }
        var granted = features.rawValue, ioctls: UInt64 = 0
        let result = unsafe CLinuxUAPI_uffd_api(fd, &granted, &ioctls)
        guard result >= 0 else {
            close(fd)
            throw .ioctl("UFFDIO_API", Errno(rawValue: Int32(-result)))
        }
        let event = CLinuxUAPI_eventfd()
        guard event >= 0 else {
            close(fd)
            throw .open(Errno(rawValue: -event))
        }
        descriptor = fd
        interruption = event
        self.features = UserfaultfdFeatures(rawValue: granted)
    }

    deinit {
        close(descriptor)
        close(interruption)
    }

    /// What this kernel's userfaultfd offers: asked on a descriptor of its own,
    /// since a descriptor takes one handshake only.
    public static func availableFeatures() throws(UserfaultfdError) -> UserfaultfdFeatures {
        let fd = CLinuxUAPI_userfaultfd()
        guard fd >= 0 else { throw .open(Errno(rawValue: -fd)) }
        defer { close(fd) }
        var features: UInt64 = 0, ioctls: UInt64 = 0
        let result = unsafe CLinuxUAPI_uffd_api(fd, &features, &ioctls)
        guard result >= 0 else { throw .ioctl("UFFDIO_API", Errno(rawValue: Int32(-result))) }
        return UserfaultfdFeatures(rawValue: features)
    }

    // MARK: ranges

    /// Registers `[address, address + length)` for `modes`; checks the range
    /// supports the ioctls those modes need.
    public func register(address: UInt64, length: UInt64, modes: UserfaultfdModes) throws(UserfaultfdError) {
        var ioctls: UInt64 = 0
        try check("UFFDIO_REGISTER", unsafe CLinuxUAPI_uffd_register(descriptor, address, length, modes.rawValue, &ioctls))
        let needed: [(UInt64, String)] = (modes.contains(.writeProtect) ? [(0x06, "UFFDIO_WRITEPROTECT")] : [])
            + (modes.contains(.missing) ? [(0x03, "UFFDIO_COPY")] : []) + (modes.contains(.minor) ? [(0x07, "UFFDIO_CONTINUE")] : [])
        for (bit, name) in needed where ioctls & (1 << bit) == 0 {
            try? unregister(address: address, length: length)
            throw .missingRangeIoctl(name)
        }
    }

    /// Ends a registration; pending faults in the range are woken.
    public func unregister(address: UInt64, length: UInt64) throws(UserfaultfdError) {
        try check("UFFDIO_UNREGISTER", CLinuxUAPI_uffd_unregister(descriptor, address, length))
    }

    // MARK: resolving faults

    /// Write-protects the range (`protect`) or lifts the protection; lifting it
    /// wakes threads waiting on the range unless `wake` is false.
    public func writeProtect(address: UInt64, length: UInt64, protect: Bool, wake: Bool = true) throws(UserfaultfdError) {
        try check("UFFDIO_WRITEPROTECT", CLinuxUAPI_uffd_writeprotect(descriptor, address, length, protect ? 1 : 0, wake ? 1 : 0))
    }

    /// Wakes threads waiting on faults in the range.
    public func wake(address: UInt64, length: UInt64) throws(UserfaultfdError) {
        try check("UFFDIO_WAKE", CLinuxUAPI_uffd_wake(descriptor, address, length))
    }

    /// Places `bytes` at `address` atomically (`UFFDIO_COPY`), optionally write-protected.
    public func copy(_ bytes: UnsafeRawBufferPointer, to address: UInt64, wake: Bool = true, writeProtected: Bool = false) throws(UserfaultfdError) {
        var copied: Int64 = 0
        try check("UFFDIO_COPY", unsafe CLinuxUAPI_uffd_copy(descriptor, address, bytes.baseAddress, UInt64(bytes.count),
                                                                wake ? 1 : 0, writeProtected ? 1 : 0, &copied))
    }

    /// Places `bytes[range]` at `address` atomically (`UFFDIO_COPY`), waking
    /// the threads waiting there.  A page already there fails with `EEXIST`.
    public func copy(from bytes: [UInt8], range: Range<Int>, to address: UInt64) throws(UserfaultfdError) {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count)
        var failure: UserfaultfdError?
        unsafe bytes.withUnsafeBytes { raw in
            // SAFETY: `range` lies inside `bytes` (checked above); the view does not escape.
            do throws(UserfaultfdError) { try unsafe copy(UnsafeRawBufferPointer(rebasing: raw[range]), to: address) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Places `bytes[range]` at `address` (`UFFDIO_COPY`, waking the threads
    /// waiting there) as far as it can: a page already there is skipped, `unit`
    /// bytes of it, and the rest still placed.  Returns false if one was there.
    ///
    /// The kernel stops a copy at the first page already there; when it had
    /// copied some pages before it, it answers EAGAIN with how far it got
    /// rather than EEXIST.  Both, and a plain EAGAIN (the address space
    /// changing under it), are continued from where the copy stopped, so a
    /// range is never left half placed.
    public func copyAll(from bytes: [UInt8], range: Range<Int>, to address: UInt64, unit: Int) throws(UserfaultfdError) -> Bool {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count && unit > 0)
        return try fillAll("UFFDIO_COPY", length: range.count, unit: unit) { start, progress in
            unsafe bytes.withUnsafeBytes { raw in
                // SAFETY: [range.lowerBound + start, range.upperBound) lies inside `bytes` (checked above); the view does not escape.
                unsafe CLinuxUAPI_uffd_copy(descriptor, address + UInt64(start), raw.baseAddress! + range.lowerBound + start,
                                            UInt64(range.count - start), 1, 0, &progress)
            }
        }
    }

    /// `zeroPage` over the range as far as it can, as `copyAll` does: a page
    /// already there is skipped, `unit` bytes of it.  Returns false if one was there.
    public func zeroPageAll(address: UInt64, length: UInt64, unit: UInt64) throws(UserfaultfdError) -> Bool {
        precondition(unit > 0)
        return try fillAll("UFFDIO_ZEROPAGE", length: Int(length), unit: Int(unit)) { start, progress in
            unsafe CLinuxUAPI_uffd_zeropage(descriptor, address + UInt64(start), length - UInt64(start), 1, &progress)
        }
    }

    /// The loop `copyAll` and `zeroPageAll` share: `fill(start, &progress)` is one
    /// ioctl from byte `start` to the end; EAGAIN continues after the bytes it
    /// reports done, EEXIST skips one unit after them.
    private func fillAll(_ name: String, length: Int, unit: Int,
                         _ fill: (_ start: Int, _ progress: inout Int64) -> Int) throws(UserfaultfdError) -> Bool {
        var start = 0
        var allHere = true
        while start < length {
            var done: Int64 = 0
            let result = fill(start, &done)
            if result >= 0 { break }
            let progress = done > 0 ? Int(done) : 0
            switch Errno(rawValue: Int32(-result)) {
            case .resourceTemporarilyUnavailable:
                start += progress
                if progress == 0 { sched_yield() }
            case .fileExists:
                allHere = false
                start += progress + unit
            case let other: throw .ioctl(name, other)
            }
        }
        return allHere
    }

    /// Maps zero pages over the range (`UFFDIO_ZEROPAGE`; not on hugetlbfs).
    public func zeroPage(address: UInt64, length: UInt64, wake: Bool = true) throws(UserfaultfdError) {
        var zeroed: Int64 = 0
        try check("UFFDIO_ZEROPAGE", unsafe CLinuxUAPI_uffd_zeropage(descriptor, address, length, wake ? 1 : 0, &zeroed))
    }

    /// Maps the page-cache pages already there (`UFFDIO_CONTINUE`, minor faults).
    public func `continue`(address: UInt64, length: UInt64, wake: Bool = true) throws(UserfaultfdError) {
        var mapped: Int64 = 0
        try check("UFFDIO_CONTINUE", unsafe CLinuxUAPI_uffd_continue(descriptor, address, length, wake ? 1 : 0, &mapped))
    }

    // MARK: events

    /// Waits up to `timeout` for faults (nil: until one comes or `interrupt()`),
    /// then reads those waiting, at most 64.  Empty on timeout or interruption.
    public func waitForEvents(timeout: Duration?) throws(UserfaultfdError) -> [UserfaultEvent] {
        let milliseconds: Int32
        if let timeout {
            let (seconds, attoseconds) = timeout.components
            milliseconds = Int32(clamping: max(0, seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000))
        } else {
            milliseconds = -1
        }
        let ready = CLinuxUAPI_wait_either(descriptor, interruption, milliseconds)
        guard ready >= 0 else { throw .read(Errno(rawValue: -ready)) }
        if ready & 2 != 0 {
            var count: UInt64 = 0
            _ = unsafe read(interruption, &count, 8)
        }
        guard ready & 1 != 0 else { return [] }
        return try readEvents()
    }

    /// The faults waiting now, at most 64, without blocking.
    public func readEvents() throws(UserfaultfdError) -> [UserfaultEvent] {
        var addresses = [UInt64](repeating: 0, count: 64), flags = [UInt64](repeating: 0, count: 64)
        var threads = [UInt32](repeating: 0, count: 64)
        var others: Int32 = 0
        let count = unsafe addresses.withUnsafeMutableBufferPointer { a in
            unsafe flags.withUnsafeMutableBufferPointer { f in
                unsafe threads.withUnsafeMutableBufferPointer { t in
                    unsafe CLinuxUAPI_uffd_read_faults(descriptor, a.baseAddress, f.baseAddress, t.baseAddress, 64, &others)
                }
            }
        }
        guard count >= 0 else { throw .read(Errno(rawValue: -count)) }
        guard others == 0 else { throw .unexpectedEvents(Int(others)) }
        return (0..<Int(count)).map { UserfaultEvent(address: addresses[$0], flags: flags[$0], thread: threads[$0]) }
    }

    /// Makes a `waitForEvents` in another thread return now (empty).
    public func interrupt() { CLinuxUAPI_eventfd_signal(interruption) }

    private func check(_ name: String, _ result: Int) throws(UserfaultfdError) {
        guard result >= 0 else { throw .ioctl(name, Errno(rawValue: Int32(-result))) }
    }
}
