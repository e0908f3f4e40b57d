/// Every command Ferry accepts, decoded once at the socket edge.  Wire names are QEMU's.
public enum QMPCommand: Equatable, Sendable {
    case qmpCapabilities                // "qmp_capabilities"
    case queryVersion                   // "query-version"
    case queryStatus                    // "query-status"
    case queryCommands                  // "query-commands"
    case queryCpusFast                  // "query-cpus-fast"
    case stop                           // "stop"
    case cont                           // "cont"
    case quit                           // "quit"

    /// The wire names, for `query-commands` and error messages.
    public static let allNames = ["qmp_capabilities", "query-version", "query-status", "query-commands",
                                  "query-cpus-fast", "stop", "cont", "quit"]

    /// Decodes `execute` and `arguments`; every argument is checked, unknown ones refused.
    public init(name: String, arguments: [String: JSONValue]) throws(QMPError) {
        let command: QMPCommand
        switch name {
        case "qmp_capabilities":
            // QEMU accepts {"enable": [...]} naming optional capabilities; Ferry offers none (no "oob").
            if let enable = arguments["enable"] {
                guard case .array(let items) = enable else { throw .generic("Invalid parameter type for 'enable', expected: array") }
                if let first = items.first { throw .generic("Capability '\(Self.string(first))' not available") }
            }
            try Self.refuseUnknown(arguments, allowed: ["enable"])
            self = .qmpCapabilities
            return
        case "query-version": command = .queryVersion
        case "query-status": command = .queryStatus
        case "query-commands": command = .queryCommands
        case "query-cpus-fast": command = .queryCpusFast
        case "stop": command = .stop
        case "cont": command = .cont
        case "quit": command = .quit
        default: throw QMPError(.commandNotFound, "The command \(name) has not been found")
        }
        try Self.refuseUnknown(arguments, allowed: [])
        self = command
    }

    static func refuseUnknown(_ arguments: [String: JSONValue], allowed: Set<String>) throws(QMPError) {
        if let extra = arguments.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw .generic("Parameter '\(extra)' is unexpected")
        }
    }

    static func string(_ value: JSONValue) -> String {
        if case .string(let text) = value { return text }
        return "\(value)"
    }
}
