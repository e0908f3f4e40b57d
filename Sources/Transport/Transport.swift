import CLinuxUAPI
import Glibc
import Migration
import Synchronization

/// Opens migration channels from QEMU-style URIs.
public enum Transport {
    /// The source side: connects (tcp, unix), creates the file (file), or adopts
    /// the descriptor (fd).  A connect ends early, with "Operation canceled",
    /// when `cancellation` is signalled.
    public static func connect(_ uri: MigrationURI, cancellation: ConnectCancellation? = nil) throws(ChannelError) -> DescriptorChannel {
        let cancel = cancellation?.descriptor ?? -1
        switch uri {
        case .tcp(let host, let port):
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_tcp_open(host, Int32(port), 0, cancel), "connect to \(uri)"), returnPath: true)
        case .unix(let path):
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_unix_open(path, 0, cancel), "connect to \(uri)"), returnPath: true)
        case .file(let path):
            return DescriptorChannel(adopting: try unsafe check(CLinuxUAPI_open_file(path, 1), "create \(path)"), returnPath: false)
        case .fd(let number):
            return try adopt(number)
        }
    }

    /// The destination side: listens (tcp, unix) or opens for reading (file, fd).
    public static func listen(_ uri: MigrationURI) throws(ChannelError) -> IncomingListener {
        switch uri {
        case .tcp(let host, let port):
            let fd = try unsafe check(CLinuxUAPI_tcp_open(host, Int32(port), 1, -1), "listen on \(uri)")
            let bound = CLinuxUAPI_local_port(fd)
            return IncomingListener(kind: .socket(fd), address: .tcp(host: host, port: bound > 0 ? UInt16(bound) : port))
        case .unix(let path):
            return IncomingListener(kind: .socket(try unsafe check(CLinuxUAPI_unix_open(path, 1, -1), "listen on \(uri)")), address: uri)
        case .file(let path):
            let fd = try unsafe check(CLinuxUAPI_open_file(path, 0), "open \(path)")
            return IncomingListener(kind: .ready(DescriptorChannel(adopting: fd, returnPath: false)), address: uri)
        case .fd(let number):
            return IncomingListener(kind: .ready(try adopt(number)), address: uri)
        }
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

/// A destination waiting for its source: a listening socket until `accept`,
/// or a file or descriptor that is ready at once.
public final class IncomingListener: Sendable {
    enum Kind { case socket(Int32), ready(DescriptorChannel) }
    let kind: Kind
    /// Where it listens; for `tcp:HOST:0`, with the port the kernel chose.
    public let address: MigrationURI
    let closed = Mutex(false)

    init(kind: Kind, address: MigrationURI) {
        self.kind = kind
        self.address = address
    }

    deinit { close() }

    /// Blocks until the source connects.
    public func accept() throws(ChannelError) -> DescriptorChannel {
        switch kind {
        case .ready(let channel): return channel
        case .socket(let fd):
            let connection = try Transport.check(CLinuxUAPI_accept(fd), "accept on \(address)")
            close()
            return DescriptorChannel(adopting: connection, returnPath: true)
        }
    }

    public func close() {
        guard case .socket(let fd) = kind else { return }
        let first = closed.withLock { done -> Bool in
            defer { done = true }
            return !done
        }
        guard first else { return }
        _ = CLinuxUAPI_shutdown(fd)
        _ = Glibc.close(fd)
        if case .unix(let path) = address { _ = unsafe unlink(path) }
    }
}

/// Cancels a `Transport.connect` in progress from another thread (an eventfd).
public final class ConnectCancellation: Sendable {
    let descriptor: Int32

    public init() throws(ChannelError) {
        descriptor = try Transport.check(CLinuxUAPI_eventfd(), "create an eventfd")
    }

    deinit { _ = Glibc.close(descriptor) }

    public func cancel() { CLinuxUAPI_eventfd_signal(descriptor) }
}

/// Opens a migration URI on the migration thread; `migrate_cancel` abandons the connect.
public struct URIChannelOpener: ChannelOpener {
    let uri: MigrationURI
    let cancellation: ConnectCancellation

    public init(_ uri: MigrationURI) throws(ChannelError) {
        self.uri = uri
        cancellation = try ConnectCancellation()
    }

    public func open() throws(ChannelError) -> any ByteChannel {
        do { return try Transport.connect(uri, cancellation: cancellation) } catch {
            throw .connectFailed(uri: uri.description, reason: error.description)
        }
    }

    public func cancel() { cancellation.cancel() }
}
