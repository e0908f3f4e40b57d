import CLinuxUAPI
import Glibc
import Migration
import Synchronization

/// Opens migration channels from QEMU-style URIs.
public enum Transport {
    /// The source side: connects (tcp, unix), creates the file (file), or adopts
    /// the descriptor (fd; `fd:NAME` takes it out of `descriptors`).  A connect
    /// ends early, with "Operation canceled", when `cancellation` is signalled.
    public static func connect(_ uri: MigrationURI, cancellation: ConnectCancellation? = nil,
                               descriptors: DescriptorRegistry? = nil) throws(ChannelError) -> DescriptorChannel {
        let cancel = cancellation?.descriptor ?? -1
        switch uri {
        case .tcp(let host, let port):
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_tcp_open(host, Int32(port), 0, cancel), "connect to \(uri)"), returnPath: true)
        case .unix(let path):
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_unix_open(path, 0, cancel), "connect to \(uri)"), returnPath: true)
        case .file(let path, let offset):
            if let set = DescriptorRegistry.fdsetID(path: path) {
                return try fdsetFile(set, writing: true, offset: offset, descriptors: descriptors)
            }
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_open_file(path, 1, Int(offset)), "create \(path)"), returnPath: false)
        case .fd(let number):
            return try adopt(number)
        case .fdName(let name):
            return try adopt(named: name, from: descriptors)
        }
    }

    /// The destination side: listens (tcp, unix) or opens for reading (file,
    /// fd; `fd:NAME` takes it out of `descriptors`).
    public static func listen(_ uri: MigrationURI, descriptors: DescriptorRegistry? = nil) throws(ChannelError) -> IncomingListener {
        switch uri {
        case .tcp(let host, let port):
            let fd = try unsafe check(CLinuxUAPI_tcp_open(host, Int32(port), 1, -1), "listen on \(uri)")
            let bound = CLinuxUAPI_local_port(fd)
            return IncomingListener(listening: fd, address: .tcp(host: host, port: bound > 0 ? UInt16(bound) : port))
        case .unix(let path):
            return IncomingListener(listening: try unsafe check(CLinuxUAPI_unix_open(path, 1, -1), "listen on \(uri)"), address: uri)
        case .file(let path, let offset):
            if let set = DescriptorRegistry.fdsetID(path: path) {
                return IncomingListener(ready: try fdsetFile(set, writing: false, offset: offset, descriptors: descriptors), address: uri)
            }
            let fd = try unsafe check(CLinuxUAPI_open_file(path, 0, Int(offset)), "open \(path)")
            return IncomingListener(ready: DescriptorChannel(adopting: fd, returnPath: false), address: uri)
        case .fd(let number):
            return IncomingListener(ready: try adopt(number), address: uri)
        case .fdName(let name):
            return IncomingListener(ready: try adopt(named: name, from: descriptors), address: uri)
        }
    }

    /// `file:/dev/fdset/N`: a copy of a fitting descriptor of set N (QEMU's
    /// `qemu_open` on an fdset path), as a stream file from `offset`.
    static func fdsetFile(_ set: Int64, writing: Bool, offset: UInt64, descriptors: DescriptorRegistry?) throws(ChannelError) -> DescriptorChannel {
        guard let descriptors else { throw .invalidURI("/dev/fdset/\(set): no descriptors were passed") }
        let fd = try descriptors.duplicate(fdset: set, writable: writing, direct: false)
        let channel = DescriptorChannel(adopting: fd, returnPath: false)
        let result = CLinuxUAPI_position_file(fd, writing ? 1 : 0, Int(offset))
        guard result == 0 else { throw .system("position /dev/fdset/\(set) at offset \(offset)", errno: -result) }
        return channel
    }

    /// Takes the descriptor QMP `getfd` named `name` (QEMU's `monitor_get_fd`: it is consumed).
    static func adopt(named name: String, from descriptors: DescriptorRegistry?) throws(ChannelError) -> DescriptorChannel {
        guard let number = descriptors?.takeNamed(name) else {
            throw .invalidURI("File descriptor named '\(name)' has not been found")
        }
        return try adopt(number)
    }

    static func adopt(_ number: Int32) throws(ChannelError) -> DescriptorChannel {
        let socket = CLinuxUAPI_is_socket(number)
        guard socket >= 0 else { throw .system("fd:\(number) is not an open descriptor", errno: -socket) }
        return DescriptorChannel(adopting: number, returnPath: socket == 1)
    }

    static func check(_ result: Int32, _ what: String) throws(ChannelError) -> Int32 {
        if result >= 0 { return result }
        if result <= CLINUXUAPI_EAI_BASE + 100 && result > CLINUXUAPI_EAI_BASE - 100 {
            let message = unsafe String(cString: gai_strerror(result - CLINUXUAPI_EAI_BASE))
            throw .invalidURI("cannot \(what): \(message)")
        }
        throw .system("cannot \(what)", errno: -result)
    }
}

/// A destination waiting for its source's connections: a listening socket
/// that accepts the main channel and any more (multifd) until `close`, or a
/// file or descriptor whose one channel is ready at once.
public final class IncomingListener: ChannelAcceptor {
    enum Kind { case socket(Int32), ready }
    let kind: Kind
    /// Where it listens; for `tcp:HOST:0`, with the port the kernel chose.
    public let address: MigrationURI
    let closed = Mutex(false)
    /// `interrupt` was called: a failed `accept` is the listener stopping, not an error of its own.
    let interrupted = Mutex(false)
    /// A file's or descriptor's channel until `accept` hands it out.
    let readyChannel: Mutex<DescriptorChannel?>

    /// A Unix socket's file as bound (device and inode): `close` removes the
    /// path only while it is still this one, not a newer listener's that
    /// replaced it (`migrate-recover` on the same path again).
    let socketFile: FileIdentity?

    init(listening descriptor: Int32, address: MigrationURI) {
        kind = .socket(descriptor)
        readyChannel = Mutex(nil)
        self.address = address
        if case .unix(let path) = address { socketFile = FileIdentity(path: path) } else { socketFile = nil }
    }

    init(ready channel: DescriptorChannel, address: MigrationURI) {
        kind = .ready
        readyChannel = Mutex(channel)
        self.address = address
        socketFile = nil
    }

    deinit { close() }

    /// Waits up to `timeout` (`nil`: forever) for the next connection and keeps
    /// listening for more.  A file or descriptor gives its one channel on the
    /// first call.
    ///
    /// - Throws: ``ChannelError/timedOut(_:)`` when `timeout` runs out;
    ///   ``ChannelError/invalidURI(_:)`` for a second channel from a file or
    ///   descriptor; `.system` once the listener is closed, or what `accept` said.
    public func accept(timeout: Duration? = nil) throws(ChannelError) -> DescriptorChannel {
        switch kind {
        case .ready:
            guard let channel = readyChannel.withLock({ ready in defer { ready = nil }; return ready }) else {
                throw .invalidURI("\(address) carries a single channel, and it has been accepted already (or the listener was closed)")
            }
            return channel
        case .socket(let fd):
            // A closed listener's number may belong to another file by now.
            guard !closed.withLock({ $0 }) else { throw Self.closedError(address) }
            let result = CLinuxUAPI_accept_within(fd, timeout?.pollMilliseconds ?? -1)
            if result == -ETIMEDOUT, let timeout { throw .timedOut("no connection on \(address) within \(timeout)") }
            if result < 0, closed.withLock({ $0 }) || interrupted.withLock({ $0 }) { throw Self.closedError(address) }
            return DescriptorChannel(adopting: try Transport.check(result, "accept on \(address)"), returnPath: true)
        }
    }

    /// Makes a blocked `accept` fail (and later ones) without closing the
    /// descriptor, which its owner closes once no thread accepts on it.
    public func interrupt() {
        guard case .socket(let fd) = kind else { return }
        interrupted.withLock { $0 = true }
        closed.withLock { done in if !done { _ = CLinuxUAPI_shutdown(fd) } }
    }

    static func closedError(_ address: MigrationURI) -> ChannelError {
        .system("accept on \(address): the listener is closed", errno: ECANCELED)
    }

    /// Stops listening (a connect is refused from now on; a blocked `accept` fails)
    /// and removes a Unix socket's path.  A file's or descriptor's channel not
    /// yet accepted is closed.  Idempotent.
    public func close() {
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        switch kind {
        case .ready: readyChannel.withLock { $0 = nil }
        case .socket(let fd):
            _ = CLinuxUAPI_shutdown(fd)
            _ = Glibc.close(fd)
            if case .unix(let path) = address, let socketFile, FileIdentity(path: path) == socketFile { _ = unsafe unlink(path) }
        }
    }
}

/// The engine accepts through ``ChannelAcceptor``, which sees only `ByteChannel`s.
/// (A constrained extension: on `IncomingListener` itself, `accept(timeout:)`
/// still means the concrete overload above, so its callers are never ambiguous.)
extension ChannelAcceptor where Self == IncomingListener {
    public func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel {
        try (self as IncomingListener).accept(timeout: timeout) as DescriptorChannel
    }
}

/// Cancels a `Transport.connect` in progress from another thread (an eventfd).
public final class ConnectCancellation: Sendable {
    let event: EventDoorbell
    var descriptor: Int32 { event.descriptor }

    public init() throws(ChannelError) { event = try EventDoorbell() }

    public func cancel() { event.ring() }
}

/// Opens a migration URI on the migration thread; `migrate_cancel` abandons the connect.
/// An `fd:NAME` takes its descriptor out of `descriptors` then.
public struct URIChannelOpener: ChannelOpener {
    let uri: MigrationURI
    let cancellation: ConnectCancellation
    let descriptors: DescriptorRegistry?

    public init(_ uri: MigrationURI, descriptors: DescriptorRegistry? = nil) throws(ChannelError) {
        self.uri = uri
        self.descriptors = descriptors
        cancellation = try ConnectCancellation()
    }

    public func open() throws(ChannelError) -> any ByteChannel {
        do { return try Transport.connect(uri, cancellation: cancellation, descriptors: descriptors) } catch {
            throw .connectFailed(uri: uri.description, reason: error.description)
        }
    }

    public func cancel() { cancellation.cancel() }
}

extension FileIdentity {
    /// The file `path` names; nil when it names nothing.
    init?(path: String) {
        var device: UInt64 = 0, inode: UInt64 = 0
        // SAFETY: both pointers are to locals that outlive the call.
        guard unsafe CLinuxUAPI_path_identity(path, &device, &inode) == 0 else { return nil }
        self.init(device: device, inode: inode)
    }
}
