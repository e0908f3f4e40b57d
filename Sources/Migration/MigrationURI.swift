/// Where a migration goes or comes from, in QEMU's URI syntax:
/// `tcp:HOST:PORT` (`tcp:[::1]:PORT` for IPv6, `tcp::PORT` for any address
/// when listening), `unix:PATH`, `fd:N` or `fd:NAME` (a descriptor QMP's
/// `getfd` named; a name never starts with a digit, as in QEMU) and
/// `file:PATH[,offset=N]` (the
/// migration starts N bytes into the file; the first ",offset=" ends the path,
/// and N is a size as QEMU's `qemu_strtosz` reads one: see `size`).
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
            // As QEMU's file_parse_offset: the first ",offset=" ends the path; a path may hold other commas.
            var path = Substring(rest), offset: UInt64 = 0
            if let option = rest.range(of: ",offset=") {
                path = rest[..<option.lowerBound]
                let value = rest[option.upperBound...]
                guard let parsed = Self.size(value) else {
                    throw .invalidURI("file: URI offset '\(value)' is not a size in bytes (decimal, 0x hex, with a B, K, M, G, T, P or E suffix, a fraction only with K-E)")
                }
                offset = parsed
            }
            guard !path.isEmpty else { throw .invalidURI("file: URI needs a path") }
            self = .file(path: String(path), offset: offset)
        default:
            throw .invalidURI("unknown migration protocol: \(text)")
        }
    }

    /// A byte count as QEMU's `qemu_strtosz` reads an offset: decimal (a fraction
    /// only with a unit larger than a byte: "1.5M") or 0x hex, then an optional
    /// suffix B, K, M, G, T, P or E (powers of 1024, either case); at most 2^63 - 1.
    static func size(_ text: Substring) -> UInt64? {
        var digits = text, scale: UInt64 = 1
        let units: [Character: UInt64] = ["b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60]
        if let last = digits.last, let unit = units[Character(last.lowercased())] {
            scale = unit
            digits = digits.dropLast()
        }
        let value: UInt64, fraction: Double
        if digits.lowercased().hasPrefix("0x") {
            guard let hex = UInt64(digits.dropFirst(2), radix: 16), digits.count > 2 else { return nil }
            (value, fraction) = (hex, 0)
        } else {
            let parts = digits.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
            guard let whole = UInt64(parts[0]) else { return nil }
            value = whole
            if parts.count == 2 {
                // "1." or "1.5" with no unit (or B) is refused, as QEMU does.
                guard scale > 1, !parts[1].isEmpty, parts[1].allSatisfy({ ("0"..."9").contains($0) }), let part = Double("0." + parts[1]) else { return nil }
                fraction = part
            } else {
                fraction = 0
            }
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        let (total, overflowAgain) = bytes.addingReportingOverflow(UInt64(fraction * Double(scale)))
        return overflow || overflowAgain || total > UInt64(Int64.max) ? nil : total
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
