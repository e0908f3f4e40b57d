/// The command table: every QMP command Ferry answers, its arguments and its
/// return type.  `QMPCommand` decodes only names listed here, `query-commands`
/// lists them, HMP lines become these commands, and `query-qmp-schema` is
/// generated from it, so none of them can disagree.
///
/// Type names are readable (`StatusInfo`, `q_empty`), not the numbers QEMU
/// masks them with; clients look types up by the names the schema gives.
public enum QMPSchema {
    /// One member of an object type (or of a command's arguments).
    public struct Member: Equatable, Sendable {
        public let name: String
        public let type: String
        public let optional: Bool

        public init(_ name: String, _ type: String, optional: Bool = false) {
            (self.name, self.type, self.optional) = (name, type, optional)
        }
    }

    /// One command or event: its arguments (none: `q_empty`), or a named
    /// argument type, and, for a command, its return type.
    public struct Entry: Equatable, Sendable {
        public let name: String
        public let arguments: [Member]
        public let argumentType: String?
        public let returns: String

        init(_ name: String, _ arguments: [Member] = [], argumentType: String? = nil, returns: String = "q_empty") {
            (self.name, self.arguments, self.argumentType, self.returns) = (name, arguments, argumentType, returns)
        }
    }

    public static let commands: [Entry] = [
        Entry("qmp_capabilities", [Member("enable", "[QMPCapability]", optional: true)]),
        Entry("query-version", returns: "VersionInfo"),
        Entry("query-status", returns: "StatusInfo"),
        Entry("query-commands", returns: "[CommandInfo]"),
        Entry("query-cpus-fast", returns: "[CpuInfoFast]"),
        Entry("stop"),
        Entry("cont"),
        Entry("quit"),
        Entry("migrate", [Member("uri", "str"), Member("channels", "[any]", optional: true),
                          Member("detach", "bool", optional: true), Member("resume", "bool", optional: true)]),
        Entry("migrate-incoming", [Member("uri", "str"), Member("channels", "[any]", optional: true),
                                   Member("exit-on-error", "bool", optional: true)]),
        Entry("migrate_cancel"),
        Entry("migrate-pause"),
        Entry("migrate-recover", [Member("uri", "str")]),
        Entry("migrate-start-postcopy"),
        Entry("migrate-set-capabilities", [Member("capabilities", "[MigrationCapabilityStatus]")]),
        Entry("query-migrate-capabilities", returns: "[MigrationCapabilityStatus]"),
        // Its members are the engine's parameter names (see `introspect`).
        Entry("migrate-set-parameters", argumentType: "MigrationParameters"),
        Entry("query-migrate-parameters", returns: "MigrationParameters"),
        Entry("query-migrate", returns: "MigrationInfo"),
        Entry("query-qmp-schema", returns: "[SchemaInfo]"),
        Entry("human-monitor-command", [Member("command-line", "str"), Member("cpu-index", "int", optional: true)],
              returns: "str"),
        Entry("getfd", [Member("fdname", "str")]),
        Entry("closefd", [Member("fdname", "str")]),
        Entry("add-fd", [Member("fdset-id", "int", optional: true), Member("opaque", "str", optional: true)], returns: "AddfdInfo"),
        Entry("remove-fd", [Member("fdset-id", "int"), Member("fd", "int", optional: true)]),
        Entry("query-fdsets", returns: "[FdsetInfo]"),
        Entry("balloon", [Member("value", "int")]),
        Entry("query-balloon", returns: "BalloonInfo"),
    ]

    public static let events: [Entry] = [
        Entry("MIGRATION", [Member("status", "MigrationStatus")]),
        Entry("MIGRATION_PASS", [Member("pass", "int")]),
        Entry("STOP"),
        Entry("RESUME"),
        Entry("SHUTDOWN", [Member("guest", "bool"), Member("reason", "ShutdownCause")]),
        Entry("GUEST_PANICKED", [Member("action", "GuestPanicAction"), Member("info", "any", optional: true)]),
        Entry("BALLOON_CHANGE", [Member("actual", "int")]),
    ]

    static let builtins = ["str", "int", "bool", "number", "any", "null"]

    /// The `query-qmp-schema` reply.  `parameters` and `capabilities` are the
    /// migration engine's names (the QMP layer does not own them).
    /// `textParameters` take names (strings), the other parameters integers.
    public static func introspect(parameters: [String], textParameters: [String] = [], capabilities: [String]) -> JSONValue {
        var objects: [String: [Member]] = [
            "q_empty": [],
            "VersionInfo": [Member("qemu", "VersionTriple"), Member("package", "str")],
            "VersionTriple": [Member("major", "int"), Member("minor", "int"), Member("micro", "int")],
            "StatusInfo": [Member("running", "bool"), Member("status", "RunState"), Member("singlestep", "bool", optional: true)],
            "CommandInfo": [Member("name", "str")],
            "CpuInfoFast": [Member("cpu-index", "int"), Member("qom-path", "str"), Member("thread-id", "int"),
                            Member("target", "str"), Member("props", "any", optional: true)],
            "MigrationCapabilityStatus": [Member("capability", "MigrationCapability"), Member("state", "bool")],
            "MigrationParameters": parameters.map { Member($0, textParameters.contains($0) ? "str" : "int", optional: true) },
            "MigrationInfo": [Member("status", "MigrationStatus", optional: true), Member("ram", "MigrationStats", optional: true),
                              Member("total-time", "int", optional: true), Member("setup-time", "int", optional: true),
                              Member("downtime", "int", optional: true), Member("expected-downtime", "int", optional: true),
                              Member("cpu-throttle-percentage", "int", optional: true), Member("error-desc", "str", optional: true),
                              Member("socket-address", "[any]", optional: true),
                              Member("postcopy-blocktime", "int", optional: true), Member("postcopy-vcpu-blocktime", "[int]", optional: true),
                              Member("postcopy-latency", "int", optional: true), Member("postcopy-latency-dist", "[int]", optional: true),
                              Member("postcopy-vcpu-latency", "[int]", optional: true),
                              Member("postcopy-non-vcpu-latency", "int", optional: true),
                              Member("x-ferry-channels", "[any]", optional: true),
                              Member("x-ferry-free-page-hints", "any", optional: true)],
            "MigrationStats": ["transferred", "remaining", "total", "duplicate", "normal", "normal-bytes", "dirty-sync-count",
                               "dirty-pages-rate", "pages-per-second", "page-size", "precopy-bytes", "downtime-bytes",
                               "postcopy-bytes", "multifd-bytes", "postcopy-requests", "dirty-sync-missed-zero-copy"]
                .map { Member($0, "int") } + [Member("mbps", "number")],
            "SchemaInfo": [Member("name", "str"), Member("meta-type", "SchemaMetaType")],
            "AddfdInfo": [Member("fdset-id", "int"), Member("fd", "int")],
            "FdsetInfo": [Member("fdset-id", "int"), Member("fds", "[FdsetFdInfo]")],
            "FdsetFdInfo": [Member("fd", "int"), Member("opaque", "str", optional: true)],
            "BalloonInfo": [Member("actual", "int")],
        ]
        let enums: [String: [String]] = [
            "QMPCapability": ["oob"],
            "RunState": ["debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
                         "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
                         "guest-panicked", "colo"],
            "MigrationStatus": ["none", "setup", "cancelling", "cancelled", "active", "postcopy-active", "postcopy-paused",
                                "postcopy-recover-setup", "postcopy-recover", "completed", "failed", "colo",
                                "pre-switchover", "device", "wait-unplug"],
            "MigrationCapability": capabilities,
            "ShutdownCause": ["none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui",
                              "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load"],
            "GuestPanicAction": ["pause", "poweroff", "run"],
            "SchemaMetaType": ["builtin", "enum", "array", "object", "alternate", "command", "event"],
        ]
        var entries: [JSONValue] = []
        func arguments(_ entry: Entry, prefix: String) -> String {
            if let type = entry.argumentType { return type }
            if entry.arguments.isEmpty { return "q_empty" }
            let name = "q_obj_\(entry.name)-\(prefix)"
            objects[name] = entry.arguments
            return name
        }
        for entry in commands {
            entries.append(["name": .string(entry.name), "meta-type": "command",
                            "arg-type": .string(arguments(entry, prefix: "arg")), "ret-type": .string(entry.returns)])
        }
        for entry in events {
            entries.append(["name": .string(entry.name), "meta-type": "event", "arg-type": .string(arguments(entry, prefix: "arg"))])
        }
        for (name, members) in objects.sorted(by: { $0.key < $1.key }) {
            entries.append(["name": .string(name), "meta-type": "object",
                            "members": .array(members.map { member -> JSONValue in
                                var json: [String: JSONValue] = ["name": .string(member.name), "type": .string(member.type)]
                                if member.optional { json["default"] = .null }
                                return .object(json)
                            })])
        }
        for (name, values) in enums.sorted(by: { $0.key < $1.key }) {
            entries.append(["name": .string(name), "meta-type": "enum",
                            "members": .array(values.map { ["name": .string($0)] }), "values": .array(values.map { .string($0) })])
        }
        // Every array type some member or return names, and the builtins.
        var referenced = Set<String>()
        for entry in commands + events { referenced.insert(entry.returns); entry.arguments.forEach { referenced.insert($0.type) } }
        // (Named argument types are objects above; their members are counted with the objects.)
        for members in objects.values { members.forEach { referenced.insert($0.type) } }
        for array in referenced.filter({ $0.hasPrefix("[") }).sorted() {
            entries.append(["name": .string(array), "meta-type": "array", "element-type": .string(String(array.dropFirst().dropLast()))])
        }
        for builtin in builtins {
            entries.append(["name": .string(builtin), "meta-type": "builtin", "json-type": .string(jsonType(builtin))])
        }
        return .array(entries)
    }

    static func jsonType(_ builtin: String) -> String {
        switch builtin {
        case "str": "string"
        case "int": "int"
        case "bool": "boolean"
        case "number": "number"
        case "null": "null"
        default: "value"
        }
    }
}
