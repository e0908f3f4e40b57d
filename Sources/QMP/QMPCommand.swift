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
    /// With `resume`: reconnect a paused postcopy migration.
    case migrate(uri: String, resume: Bool = false)   // "migrate"
    case migratePause                   // "migrate-pause"
    case migrateRecover(uri: String)    // "migrate-recover"
    case migrateIncoming(uri: String, exitOnError: Bool)   // "migrate-incoming"
    case migrateCancel                  // "migrate_cancel"
    case migrateStartPostcopy           // "migrate-start-postcopy"
    case migrateSetCapabilities([CapabilityState])         // "migrate-set-capabilities"
    case queryMigrateCapabilities       // "query-migrate-capabilities"
    case migrateSetParameters([String: JSONValue])          // "migrate-set-parameters"
    case queryMigrateParameters         // "query-migrate-parameters"
    case queryMigrate                   // "query-migrate"
    case queryQMPSchema                 // "query-qmp-schema"
    /// An HMP line run through QMP; the reply is the text HMP would print.
    case humanMonitorCommand(commandLine: String, cpuIndex: Int64?)   // "human-monitor-command"
    /// Names the descriptor passed with the client's last message (SCM_RIGHTS).
    case getfd(fdname: String)          // "getfd"
    case closefd(fdname: String)        // "closefd"
    /// Adds the descriptor passed with the client's last message to a descriptor set.
    case addFd(fdsetID: Int64?, opaque: String?)           // "add-fd"
    case removeFd(fdsetID: Int64, fd: Int64?)              // "remove-fd"
    case queryFdsets                    // "query-fdsets"
    case balloon(value: Int64)          // "balloon": the guest's memory target, bytes
    case queryBalloon                   // "query-balloon"

    /// One `{"capability": NAME, "state": BOOL}` of migrate-set-capabilities.
    public struct CapabilityState: Equatable, Sendable {
        public let capability: String
        public let state: Bool

        public init(capability: String, state: Bool) {
            (self.capability, self.state) = (capability, state)
        }
    }

    /// The wire names, for `query-commands` and error messages: the command table's.
    public static var allNames: [String] { QMPSchema.commands.map(\.name) }

    /// Decodes `execute` and `arguments`; every argument is checked, unknown ones refused.
    public init(name: String, arguments: [String: JSONValue]) throws(QMPError) {
        // The table is the one list of commands: a name missing there is not answered.
        guard QMPSchema.commands.contains(where: { $0.name == name }) else {
            throw QMPError(.commandNotFound, "The command \(name) has not been found")
        }
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
        case "migrate":
            try Self.refuseUnknown(arguments, allowed: ["uri", "channels", "detach", "resume"])
            if arguments["channels"] != nil { throw .generic("Parameter 'channels' is not supported by Ferry; use 'uri'") }
            if let detach = arguments["detach"], case .bool = detach {} else if arguments["detach"] != nil {
                throw .generic("Invalid parameter type for 'detach', expected: boolean")
            }
            var resume = false
            if let value = arguments["resume"] {
                guard case .bool(let flag) = value else { throw .generic("Invalid parameter type for 'resume', expected: boolean") }
                resume = flag
            }
            self = .migrate(uri: try Self.requiredString(arguments, "uri"), resume: resume)
            return
        case "migrate-pause": command = .migratePause
        case "migrate-recover":
            try Self.refuseUnknown(arguments, allowed: ["uri"])
            self = .migrateRecover(uri: try Self.requiredString(arguments, "uri"))
            return
        case "migrate-incoming":
            try Self.refuseUnknown(arguments, allowed: ["uri", "channels", "exit-on-error"])
            if arguments["channels"] != nil { throw .generic("Parameter 'channels' is not supported by Ferry; use 'uri'") }
            var exitOnError = true
            if let value = arguments["exit-on-error"] {
                guard case .bool(let flag) = value else { throw .generic("Invalid parameter type for 'exit-on-error', expected: boolean") }
                exitOnError = flag
            }
            self = .migrateIncoming(uri: try Self.requiredString(arguments, "uri"), exitOnError: exitOnError)
            return
        case "migrate_cancel": command = .migrateCancel
        case "migrate-start-postcopy": command = .migrateStartPostcopy
        case "migrate-set-capabilities":
            try Self.refuseUnknown(arguments, allowed: ["capabilities"])
            guard let list = arguments["capabilities"] else { throw .generic("Parameter 'capabilities' is missing") }
            guard case .array(let items) = list else { throw .generic("Invalid parameter type for 'capabilities', expected: array") }
            var states: [CapabilityState] = []
            for item in items {
                guard case .object(let members) = item else { throw .generic("Invalid parameter type for 'capabilities[\(states.count)]', expected: object") }
                try Self.refuseUnknown(members, allowed: ["capability", "state"])
                let name = try Self.requiredString(members, "capability")
                guard case .bool(let state)? = members["state"] else {
                    throw .generic(members["state"] == nil ? "Parameter 'state' is missing" : "Invalid parameter type for 'state', expected: boolean")
                }
                states.append(CapabilityState(capability: name, state: state))
            }
            self = .migrateSetCapabilities(states)
            return
        case "query-migrate-capabilities": command = .queryMigrateCapabilities
        case "migrate-set-parameters":
            self = .migrateSetParameters(arguments)
            return
        case "query-migrate-parameters": command = .queryMigrateParameters
        case "query-migrate": command = .queryMigrate
        case "query-qmp-schema": command = .queryQMPSchema
        case "human-monitor-command":
            try Self.refuseUnknown(arguments, allowed: ["command-line", "cpu-index"])
            var cpuIndex: Int64?
            if let value = arguments["cpu-index"] {
                guard case .int(let index) = value else { throw .generic("Invalid parameter type for 'cpu-index', expected: integer") }
                cpuIndex = index
            }
            self = .humanMonitorCommand(commandLine: try Self.requiredString(arguments, "command-line"), cpuIndex: cpuIndex)
            return
        case "getfd", "closefd":
            try Self.refuseUnknown(arguments, allowed: ["fdname"])
            let fdname = try Self.requiredString(arguments, "fdname")
            self = name == "getfd" ? .getfd(fdname: fdname) : .closefd(fdname: fdname)
            return
        case "add-fd":
            try Self.refuseUnknown(arguments, allowed: ["fdset-id", "opaque"])
            self = .addFd(fdsetID: try Self.optionalInteger(arguments, "fdset-id"), opaque: try Self.optionalString(arguments, "opaque"))
            return
        case "remove-fd":
            try Self.refuseUnknown(arguments, allowed: ["fdset-id", "fd"])
            guard let fdsetID = try Self.optionalInteger(arguments, "fdset-id") else { throw .generic("Parameter 'fdset-id' is missing") }
            self = .removeFd(fdsetID: fdsetID, fd: try Self.optionalInteger(arguments, "fd"))
            return
        case "query-fdsets": command = .queryFdsets
        case "balloon":
            try Self.refuseUnknown(arguments, allowed: ["value"])
            guard let value = try Self.optionalInteger(arguments, "value") else { throw .generic("Parameter 'value' is missing") }
            self = .balloon(value: value)
            return
        case "query-balloon": command = .queryBalloon
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

    static func requiredString(_ arguments: [String: JSONValue], _ name: String) throws(QMPError) -> String {
        guard let value = arguments[name] else { throw .generic("Parameter '\(name)' is missing") }
        guard case .string(let text) = value else { throw .generic("Invalid parameter type for '\(name)', expected: string") }
        return text
    }

    static func optionalString(_ arguments: [String: JSONValue], _ name: String) throws(QMPError) -> String? {
        guard let value = arguments[name] else { return nil }
        guard case .string(let text) = value else { throw .generic("Invalid parameter type for '\(name)', expected: string") }
        return text
    }

    static func optionalInteger(_ arguments: [String: JSONValue], _ name: String) throws(QMPError) -> Int64? {
        guard let value = arguments[name] else { return nil }
        guard case .int(let number) = value else { throw .generic("Invalid parameter type for '\(name)', expected: integer") }
        return number
    }

    /// Whether the command takes the descriptor the client passed with its last
    /// message (`getfd`, `add-fd`, and `getfd` as an HMP line).  The socket
    /// hands it over when the command is decoded, in the order the bytes came.
    public var takesDescriptor: Bool {
        switch self {
        case .getfd, .addFd: true
        case .humanMonitorCommand(let line, _):
            if case .run(let command, _)? = try? HMPCommand(parsing: line) { command.takesDescriptor } else { false }
        // Listed one by one: a new command does not compile until this is decided for it.
        case .qmpCapabilities, .queryVersion, .queryStatus, .queryCommands, .queryCpusFast, .stop, .cont, .quit,
             .migrate, .migratePause, .migrateRecover, .migrateIncoming, .migrateCancel, .migrateStartPostcopy, .migrateSetCapabilities,
             .queryMigrateCapabilities,
             .migrateSetParameters, .queryMigrateParameters, .queryMigrate, .queryQMPSchema,
             .closefd, .removeFd, .queryFdsets, .balloon, .queryBalloon: false
        }
    }

    static func string(_ value: JSONValue) -> String {
        if case .string(let text) = value { return text }
        return "\(value)"
    }
}
