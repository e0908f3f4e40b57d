/// One line of QEMU's human monitor (HMP), parsed into the QMP command it
/// runs and how its result is printed.  HMP is a second syntax for the same
/// commands: nothing here executes anything.
public enum HMPCommand: Equatable, Sendable {
    /// Run `command` as QMP would, then print its result as `output` says.
    case run(QMPCommand, HMPOutput)
    /// `help [COMMAND]`: the command list (or one command's line).
    case help(String?)
    /// A blank line: prints nothing.
    case empty

    /// Parses one line.  A bad line throws the text HMP prints for it.
    public init(parsing line: String) throws(HMPError) {
        var words = try Self.split(line)
        guard !words.isEmpty else { self = .empty; return }
        let name = words.removeFirst()
        guard let entry = Self.table.first(where: { $0.name == name || $0.alias == name }) else {
            throw HMPError("unknown command: '\(name)'")
        }
        let usage = entry.name
        func argument(_ what: String) throws(HMPError) -> String {
            guard !words.isEmpty else { throw HMPError("\(usage): missing argument '\(what)'") }
            return words.removeFirst()
        }
        func end() throws(HMPError) {
            if !words.isEmpty { throw HMPError("\(usage): extraneous characters at the end of line") }
        }
        switch entry.name {
        case "help":
            let topic = words.isEmpty ? nil : words.removeFirst()
            try end()
            self = .help(topic)
        case "info":
            let topic = try argument("item")
            try end()
            switch topic {
            case "status": self = .run(.queryStatus, .status)
            case "cpus": self = .run(.queryCpusFast, .cpus)
            case "version": self = .run(.queryVersion, .version)
            case "migrate": self = .run(.queryMigrate, .migrate)
            case "migrate_capabilities": self = .run(.queryMigrateCapabilities, .capabilities)
            case "migrate_parameters": self = .run(.queryMigrateParameters, .parameters)
            case "balloon": self = .run(.queryBalloon, .balloon)
            default: throw HMPError("unknown command: 'info \(topic)'")
            }
        case "migrate":
            var detach = false, resume = false
            while let flag = words.first, flag.hasPrefix("-"), flag.count > 1 {
                words.removeFirst()
                switch flag {
                case "-d": detach = true
                case "-r": resume = true
                default: throw HMPError("migrate: unsupported option \(flag)")
                }
            }
            let uri = try argument("uri")
            try end()
            self = .run(.migrate(uri: uri, resume: resume), detach ? .nothing : .migrateAttached)
        case "migrate_recover":
            let uri = try argument("uri")
            try end()
            self = .run(.migrateRecover(uri: uri), .nothing)
        case "migrate_incoming":
            let uri = try argument("uri")
            try end()
            // As QEMU's HMP: the destination does not exit when the load fails.
            self = .run(.migrateIncoming(uri: uri, exitOnError: false), .nothing)
        case "migrate_set_capability":
            let capability = try argument("capability")
            let state = try argument("state")
            try end()
            guard let enabled = ["on": true, "off": false][state] else { throw HMPError("migrate_set_capability: Expected 'on' or 'off'") }
            self = .run(.migrateSetCapabilities([.init(capability: capability, state: enabled)]), .nothing)
        case "migrate_set_parameter":
            let parameter = try argument("parameter")
            let text = try argument("value")
            try end()
            self = .run(.migrateSetParameters([parameter: try Self.parameterValue(parameter, text)]), .nothing)
        case "getfd", "closefd":
            let fdname = try argument("fdname")
            try end()
            self = .run(entry.name == "getfd" ? .getfd(fdname: fdname) : .closefd(fdname: fdname), .nothing)
        case "balloon":
            // HMP's target is in MiB, as QEMU's hmp_balloon shifts it.
            let text = try argument("target")
            try end()
            guard let mib = Int64(text) else { throw HMPError("balloon: invalid value '\(text)'") }
            let (bytes, overflow) = mib.multipliedReportingOverflow(by: 1 << 20)
            guard !overflow else { throw HMPError("balloon: invalid value '\(text)'") }
            self = .run(.balloon(value: bytes), .nothing)
        default:
            try end()
            guard let command = entry.command else { throw HMPError("unknown command: '\(name)'") }
            self = .run(command, .nothing)
        }
    }

    /// One HMP command: its name, short alias, argument synopsis, help text, and
    /// the QMP command it runs when it takes no arguments.
    public struct Entry: Sendable {
        public let name: String
        public let alias: String?
        public let arguments: String
        public let help: String
        let command: QMPCommand?
    }

    public static let table: [Entry] = [
        Entry(name: "balloon", alias: nil, arguments: "target", help: "request VM to change its memory allocation (in MB)", command: nil),
        Entry(name: "closefd", alias: nil, arguments: "name", help: "close a file descriptor previously passed via SCM rights", command: nil),
        Entry(name: "cont", alias: "c", arguments: "", help: "resume emulation", command: .cont),
        Entry(name: "getfd", alias: nil, arguments: "name", help: "receive a file descriptor via SCM rights and assign it a name", command: nil),
        Entry(name: "help", alias: "?", arguments: "[cmd]", help: "show the help", command: nil),
        Entry(name: "info", alias: nil, arguments: "[subcommand]",
              help: "show various information about the system state (status, cpus, version, migrate, migrate_capabilities, migrate_parameters, balloon)",
              command: nil),
        Entry(name: "migrate", alias: nil, arguments: "[-d] [-r] uri",
              help: "migrate to URI (using -d to not wait for completion)\n\t\t\t -r to resume a paused postcopy migration", command: nil),
        Entry(name: "migrate_cancel", alias: nil, arguments: "", help: "cancel the current VM migration", command: .migrateCancel),
        Entry(name: "migrate_incoming", alias: nil, arguments: "uri", help: "Continue an incoming migration from an -incoming defer", command: nil),
        Entry(name: "migrate_pause", alias: nil, arguments: "", help: "Pause an ongoing migration (postcopy-only)", command: .migratePause),
        Entry(name: "migrate_recover", alias: nil, arguments: "uri", help: "Continue a paused incoming postcopy migration", command: nil),
        Entry(name: "migrate_set_capability", alias: nil, arguments: "capability state", help: "Enable/Disable the usage of a capability for migration", command: nil),
        Entry(name: "migrate_set_parameter", alias: nil, arguments: "parameter value", help: "Set the parameter for migration", command: nil),
        Entry(name: "migrate_start_postcopy", alias: nil, arguments: "", help: "Followup to a migration command to switch the migration to postcopy mode. The postcopy-ram capability must be set on both source and destination before the original migration command .", command: .migrateStartPostcopy),
        Entry(name: "quit", alias: "q", arguments: "", help: "quit the emulator", command: .quit),
        Entry(name: "stop", alias: "s", arguments: "", help: "stop emulation", command: .stop),
    ]

    /// HMP's value syntax for one migration parameter: the bandwidths are sizes
    /// whose default unit is MiB (`1G`, `512M`, `100` = 100 MiB, `1048576B`);
    /// the others integers.  Anything else goes on as a string, for the
    /// parameters to refuse as QMP does (an unknown name, a non-integer),
    /// so names and range checks stay with the parameters alone.
    static func parameterValue(_ name: String, _ text: String) throws(HMPError) -> JSONValue {
        if name == "max-bandwidth" || name == "avail-switchover-bandwidth" {
            guard let bytes = size(text, defaultUnit: 1 << 20) else { throw HMPError("Error: Invalid size \(text)") }
            return .int(bytes)
        }
        if name == "direct-io", let flag = ["on": true, "off": false][text] { return .bool(flag) }
        return Int64(text).map { .int($0) } ?? .string(text)
    }

    /// QEMU's size syntax: a number, optionally with a fraction, then one of
    /// B K M G T P E (either case); without a suffix, `defaultUnit`.
    static func size(_ text: String, defaultUnit: Int64) -> Int64? {
        let units: [Character: Int64] = ["b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60]
        var digits = Substring(text)
        var unit = defaultUnit
        if let last = digits.last, last.isASCII, let scale = units[Character(last.lowercased())] {
            unit = scale
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              digits.filter({ $0 == "." }).count <= 1, digits.first != ".", digits.last != "." else { return nil }
        if let whole = Int64(digits) {
            let (bytes, overflow) = whole.multipliedReportingOverflow(by: unit)
            return overflow ? nil : bytes
        }
        // A fraction (`1.5G`), as QEMU allows; only with a unit above bytes.
        guard unit > 1, let value = Double(digits) else { return nil }
        let bytes = value * Double(unit)
        guard bytes < 9.2e18 else { return nil }
        return Int64(bytes)
    }

    /// Splits a line into words; double quotes group words (`"exec:cat > f"`).
    static func split(_ line: String) throws(HMPError) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false, quoted = false
        for character in line {
            if quoted {
                if character == "\"" { quoted = false } else { current.append(character) }
            } else if character == "\"" {
                quoted = true
                inWord = true
            } else if character.isWhitespace {
                if inWord { words.append(current); current = ""; inWord = false }
            } else {
                current.append(character)
                inWord = true
            }
        }
        if quoted { throw HMPError("unterminated string literal") }
        if inWord { words.append(current) }
        return words
    }
}

/// How an HMP command's QMP result is printed.
public enum HMPOutput: Equatable, Sendable {
    case nothing
    case status
    case cpus
    case version
    case migrate
    case capabilities
    case parameters
    /// `info balloon`: "balloon: actual=MiB".
    case balloon
    /// `migrate` without `-d`: through QMP the monitor cannot wait, so it says so (as QEMU does).
    case migrateAttached
}

/// What HMP prints for a line it cannot run.
public struct HMPError: Error, Equatable, Sendable {
    public let text: String
    public init(_ text: String) { self.text = text }
}
