import CLinuxUAPI
import Glibc
import GuestMemory
import Migration
import MigrationProtocol
import Synchronization

/// A mapped-ram file: positioned, vectored reads and writes from any thread,
/// with page data on an O_DIRECT descriptor when one is given.  Offsets count
/// from `base` (`file:PATH,offset=N`).  Owns its descriptors.
public final class MigrationFile: PageFile {
    let descriptor: Int32
    /// Page data goes here when set (`direct-io`).
    let directDescriptor: Int32?
    let base: UInt64
    let position = Mutex<UInt64>(0)
    let closed = Mutex(false)

    /// Adopts `descriptor` (buffered) and, for page data, `direct` (O_DIRECT).
    public init(adopting descriptor: Int32, direct: Int32?, base: UInt64) {
        self.descriptor = descriptor
        self.directDescriptor = direct
        self.base = base
    }

    deinit { close() }

    /// Opens `path` for a save (`writing`: created if missing, never truncated:
    /// an incremental save continues the file) or a restore, plus an O_DIRECT
    /// descriptor for page data if `direct`.  Refuses a file system without
    /// O_DIRECT clearly.
    /// `path` may be `/dev/fdset/N`: copies of a buffered and (with `direct`) an
    /// O_DIRECT descriptor of set N are used, picked by their flags as QEMU does.
    public static func open(path: String, writing: Bool, direct: Bool, base: UInt64,
                            descriptors: DescriptorRegistry? = nil) throws(ChannelError) -> MigrationFile {
        // O_DIRECT transfers must start on the file system's blocks: the page areas do only if the base does.
        guard !direct || base % 4096 == 0 else {
            throw .invalidURI("direct-io needs the file's offset= to be a multiple of 4096, not \(base)")
        }
        if let set = DescriptorRegistry.fdsetID(path: path) {
            guard let descriptors else { throw .invalidURI("\(path): no descriptors were passed") }
            let fd = try descriptors.duplicate(fdset: set, writable: writing, direct: false)
            guard direct else { return MigrationFile(adopting: fd, direct: nil, base: base) }
            do { return MigrationFile(adopting: fd, direct: try descriptors.duplicate(fdset: set, writable: writing, direct: true), base: base) } catch {
                _ = Glibc.close(fd)
                throw error
            }
        }
        // SAFETY: the path is passed as a C string that lives for the call.
        let fd = try Transport.check(unsafe CLinuxUAPI_open_migration_file(path, writing ? 2 : 0, 0), "open \(path)")
        guard direct else { return MigrationFile(adopting: fd, direct: nil, base: base) }
        let directFD = unsafe CLinuxUAPI_open_migration_file(path, writing ? 2 : 0, 1)
        guard directFD >= 0 else {
            _ = Glibc.close(fd)
            if directFD == -EINVAL {
                throw .system("direct-io: the file system of \(path) does not support O_DIRECT", errno: EINVAL)
            }
            throw .system("open \(path) with O_DIRECT", errno: -directFD)
        }
        return MigrationFile(adopting: fd, direct: directFD, base: base)
    }

    /// Whether `uri` names a file that starts like a mapped-ram file.
    public static func isMappedRAM(_ uri: MigrationURI, descriptors: DescriptorRegistry? = nil) -> Bool {
        guard case .file(let path, let offset) = uri,
              let file = try? open(path: path, writing: false, direct: false, base: offset, descriptors: descriptors),
              let prefix = try? file.read(MappedRAMFormat.magic.count, at: 0) else { return false }
        return MappedRAMHeader.hasMagic(prefix)
    }

    public var isDirect: Bool { directDescriptor != nil }
    public var hasReturnPath: Bool { false }

    public func length() throws(ChannelError) -> UInt64 {
        let facts = try stat()
        return facts.size > base ? facts.size - base : 0
    }

    public var identity: FileIdentity {
        get throws(ChannelError) {
            let facts = try stat()
            return FileIdentity(device: facts.device, inode: facts.inode)
        }
    }

    /// Bytes the file system has allocated for the whole file (`st_blocks`):
    /// less than its length where it has holes (a mapped-ram file's zero pages).
    public func allocatedBytes() throws(ChannelError) -> UInt64 {
        var bytes: UInt64 = 0
        // SAFETY: `bytes` outlives the call, which writes one UInt64 into it.
        let result = unsafe CLinuxUAPI_file_allocated(descriptor, &bytes)
        guard result == 0 else { throw .system("fstat on the migration file", errno: -result) }
        return bytes
    }

    func stat() throws(ChannelError) -> (size: UInt64, device: UInt64, inode: UInt64) {
        var size: UInt64 = 0, device: UInt64 = 0, inode: UInt64 = 0
        var regular: Int32 = 0
        let result = unsafe CLinuxUAPI_file_identity(descriptor, &size, &device, &inode, &regular)
        guard result == 0 else { throw .system("fstat on the migration file", errno: -result) }
        return (size, device, inode)
    }

    func absolute(_ offset: UInt64) throws(ChannelError) -> Int {
        let (sum, overflow) = offset.addingReportingOverflow(base)
        guard !overflow, sum <= UInt64(Int.max) else { throw .system("offset \(offset) past the largest file offset", errno: EINVAL) }
        return Int(sum)
    }

    public func write(_ list: borrowing GatherList, at offset: UInt64) throws(ChannelError) {
        let (start, fd) = (try absolute(offset), directDescriptor ?? descriptor)
        let outcome = unsafe list.withIOVectors { vectors in
            // SAFETY: the vectors stay valid for the whole transfer, inside `withIOVectors`.
            unsafe Self.transfer(vectors, from: start) { unsafe CLinuxUAPI_pwritev(fd, $0, $1, $2) }
        }
        switch outcome {
        case .complete: return
        case .ended: throw .system("write to the migration file", errno: EIO)
        case .failed(let errno): throw .system("write to the migration file", errno: errno)
        }
    }

    public func read(into list: borrowing ScatterList, at offset: UInt64) throws(ChannelError) {
        let (start, fd) = (try absolute(offset), directDescriptor ?? descriptor)
        let outcome = unsafe list.withIOVectors { vectors in
            // SAFETY: the vectors stay valid for the whole transfer, inside `withIOVectors`.
            unsafe Self.transfer(vectors, from: start) { unsafe CLinuxUAPI_preadv(fd, $0, $1, $2) }
        }
        switch outcome {
        case .complete: return
        case .ended: throw .endOfStream
        case .failed(let errno): throw .system("read from the migration file", errno: errno)
        }
    }

    /// Moves every byte of `vectors` with `call(vectors, count, fileOffset)` (preadv or
    /// pwritev), from `start` on, resuming short transfers where they stopped.
    static func transfer(_ vectors: UnsafeBufferPointer<iovec>, from start: Int,
                         _ call: (UnsafePointer<iovec>, Int32, Int) -> Int) -> VectorOutcome {
        var position = start
        return unsafe DescriptorChannel.transferAll(vectors) { pointer, count in
            let result = unsafe call(pointer, count, position)
            if result > 0 { position += result }
            return result
        }
    }

    public func write(_ bytes: RawSpan, at offset: UInt64) throws(ChannelError) {
        let start = try absolute(offset)
        var written = 0
        while written < bytes.byteCount {
            let result = unsafe bytes.withUnsafeBytes { raw in
                // SAFETY: [written, count) lies inside the span.
                unsafe CLinuxUAPI_pwrite(descriptor, raw.baseAddress! + written, raw.count - written, start + written)
            }
            guard result > 0 else { throw .system("write to the migration file", errno: result == 0 ? EIO : Int32(-result)) }
            written += result
        }
    }

    public func read(_ count: Int, at offset: UInt64) throws(ChannelError) -> [UInt8] {
        let start = try absolute(offset)
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let result = unsafe bytes.withUnsafeMutableBytes { raw in
                // SAFETY: [done, count) lies inside the array.
                unsafe CLinuxUAPI_pread(descriptor, raw.baseAddress! + done, count - done, start + done)
            }
            if result == 0 { throw .endOfStream }
            guard result > 0 else { throw .system("read from the migration file", errno: Int32(-result)) }
            done += result
        }
        return bytes
    }

    public func punchHole(at offset: UInt64, count: UInt64) throws(ChannelError) {
        let result = CLinuxUAPI_punch_hole(descriptor, try absolute(offset), Int(count))
        guard result == 0 else { throw .system("punch a hole in the migration file", errno: -result) }
    }

    /// On ext4 only, whose direct writes into holes run one at a time: XFS
    /// allocates for parallel direct writes side by side, and on tmpfs an
    /// allocation would fill memory.  And only with room to spare: the whole
    /// area, then 1 GiB or an eighth of the area, whichever is more, still free,
    /// since zero pages hold blocks until the save's end punches them out.
    public func allocationHelps(bytes: UInt64) -> Bool {
        var type = 0, available: UInt64 = 0
        guard unsafe CLinuxUAPI_file_system(descriptor, &type, &available) == 0,
              type == CLINUXUAPI_EXT4_SUPER_MAGIC else { return false }
        let (needed, overflow) = bytes.addingReportingOverflow(max(1 << 30, bytes / 8))
        return !overflow && available >= needed
    }

    public func allocate(at offset: UInt64, count: UInt64) throws(ChannelError) {
        guard count <= UInt64(Int.max) else { throw .system("allocate \(count) bytes in the migration file", errno: EFBIG) }
        let result = CLinuxUAPI_allocate(descriptor, try absolute(offset), Int(count))
        guard result == 0 else { throw .system("allocate blocks in the migration file", errno: -result) }
    }

    public func truncate(to length: UInt64) throws(ChannelError) {
        let result = CLinuxUAPI_ftruncate(descriptor, try absolute(length))
        guard result == 0 else { throw .system("truncate the migration file", errno: -result) }
    }

    public func synchronize() throws(ChannelError) {
        for fd in [descriptor] + (directDescriptor.map { [$0] } ?? []) {
            let result = CLinuxUAPI_fdatasync(fd)
            guard result == 0 else { throw .system("fdatasync the migration file", errno: -result) }
        }
    }

    public func seek(to offset: UInt64) { position.withLock { $0 = offset } }

    // MARK: the sequential stream (device state)

    public func write(_ bytes: [UInt8]) throws(ChannelError) {
        let at = position.withLock { $0 }
        try write(unsafe bytes.span.bytes, at: at)      // SAFETY: UInt8 has no padding
        position.withLock { $0 = at + UInt64(bytes.count) }
    }

    public func write(_ list: borrowing GatherList) throws(ChannelError) {
        try write(list.flattened())     // the state stream: small frames, never pages
    }

    public func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
        precondition(offset >= 0 && count >= 0 && offset + count <= buffer.count)
        guard count > 0 else { return 0 }
        let at = try absolute(position.withLock { $0 })
        let result = unsafe buffer.withUnsafeMutableBytes { raw in
            // SAFETY: the precondition keeps [offset, offset + count) inside the buffer.
            unsafe CLinuxUAPI_pread(descriptor, raw.baseAddress! + offset, count, at)
        }
        guard result >= 0 else { throw .system("read from the migration file", errno: Int32(-result)) }
        position.withLock { $0 += UInt64(result) }
        return result
    }

    public func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { true }

    public func shutdown() {}

    public func close() {
        closed.withLock { done in
            if !done {
                _ = Glibc.close(descriptor)
                if let directDescriptor { _ = Glibc.close(directDescriptor) }
            }
            done = true
        }
    }
}
