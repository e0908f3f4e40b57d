/// Where a migration goes or comes from, in QEMU's URI syntax:
/// `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6, `tcp::PORT` for any address
/// when listening), `unix:PATH`, `fd:N` or `fd:NAME` (a descriptor QMP's
/// `getfd` named; a name never starts with a digit, as in QEMU) and
/// `file:PATH[,offset=N]` (the
/// migration starts N bytes into the file; N in bytes, decimal or 0x hex, or
/// with a K/M/G suffix, as QEMU parses it).
public enum MigrationURI: Equatable, Sendable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)
    case fd(Int32)
    /// A descriptor named with QMP `getfd`; the machine resolves it when the migration opens.
    case fdName(String)
    case file(path: String, offset: UInt64 = 0)

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
            guard let first = rest.unicodeScalars.first else { throw .invalidURI("fd: URI needs a descriptor number or name") }
            guard ("0"..."9").contains(first) else { self = .fdName(rest); return }
            guard let number = Int32(rest), number >= 0 else { throw .invalidURI("fd: URI needs a descriptor number, not '\(rest)'") }
            self = .fd(number)
        case "file":
            var path = Substring(rest), offset: UInt64 = 0
            if let comma = rest.lastIndex(of: ","), rest[rest.index(after: comma)...].hasPrefix("offset=") {
                path = rest[..<comma]
                let value = rest[rest.index(comma, offsetBy: 8)...]
                guard let parsed = Self.size(value) else {
                    throw .invalidURI("file: URI offset '\(value)' is not a size in bytes (decimal, 0x hex, or with K, M, G)")
                }
                offset = parsed
            } else if rest.contains(",") {
                throw .invalidURI("file: URI option not understood in '\(text)' (the one option is ',offset=N')")
            }
            guard !path.isEmpty else { throw .invalidURI("file: URI needs a path") }
            self = .file(path: String(path), offset: offset)
        default:
            throw .invalidURI("unknown migration protocol: \(text)")
        }
    }

    /// A byte count as QEMU's `qemu_strtosz` reads an offset: decimal or 0x hex, optional K, M, G, T suffix.
    static func size(_ text: Substring) -> UInt64? {
        var digits = text, scale: UInt64 = 1
        if let last = digits.last, let unit = ["k": UInt64(1) << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40][last.lowercased()] {
            scale = unit
            digits = digits.dropLast()
        }
        let value = digits.lowercased().hasPrefix("0x") ? UInt64(digits.dropFirst(2), radix: 16) : UInt64(digits)
        guard let value, !digits.isEmpty else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        return overflow || bytes > UInt64(Int64.max) ? nil : bytes
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        case .fd(let number): "fd:\(number)"
        case .fdName(let name): "fd:\(name)"
        case .file(let path, let offset): offset == 0 ? "file:\(path)" : "file:\(path),offset=\(offset)"
        }
    }
}
