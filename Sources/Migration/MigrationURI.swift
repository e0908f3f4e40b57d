/// Where a migration goes or comes from, in QEMU's URI syntax:
/// `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6, `tcp::PORT` for any address
/// when listening), `unix:PATH`, `fd:N` and `file:PATH`.
public enum MigrationURI: Equatable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)
    case fd(Int32)
    case file(path: String)

    public init(parsing text: String) throws(ChannelError) {
        guard let colon = text.firstIndex(of: ":") else {
            throw .invalidURI("unknown migration protocol: \(text)")
        }
        let scheme = text[..<colon], rest = String(text[text.index(after: colon)...])
        switch scheme {
        case "tcp":
            guard let split = rest.lastIndex(of: ":") else { throw .invalidURI("tcp: URI '\(text)' needs HOST:PORT") }
            var host = String(rest[..<split])
            let portText = rest[rest.index(after: split)...]
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard let port = UInt16(portText) else { throw .invalidURI("invalid port '\(portText)' in '\(text)' (expected 0-65535)") }
            self = .tcp(host: host, port: port)
        case "unix":
            guard !rest.isEmpty else { throw .invalidURI("unix: URI needs a socket path") }
            guard rest.utf8.count < 108 else { throw .invalidURI("unix socket path is longer than 107 bytes: \(rest)") }
            self = .unix(path: rest)
        case "fd":
            guard let number = Int32(rest), number >= 0 else { throw .invalidURI("fd: URI needs a descriptor number, not '\(rest)'") }
            self = .fd(number)
        case "file":
            guard !rest.isEmpty else { throw .invalidURI("file: URI needs a path") }
            if rest.contains(",") { throw .invalidURI("file: URI options (',offset=') are not supported: \(text)") }
            self = .file(path: rest)
        default:
            throw .invalidURI("unknown migration protocol: \(text)")
        }
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        case .fd(let number): "fd:\(number)"
        case .file(let path): "file:\(path)"
        }
    }
}
