import QMP
import Testing

@Suite struct HMPParserTests {
    func parse(_ line: String) -> Result<HMPCommand, HMPError> {
        Result { () throws(HMPError) in try HMPCommand(parsing: line) }
    }

    @Test func linesBecomeTheQMPCommands() throws {
        #expect(try HMPCommand(parsing: "info status") == .run(.queryStatus, .status))
        #expect(try HMPCommand(parsing: "  info   migrate ") == .run(.queryMigrate, .migrate))
        #expect(try HMPCommand(parsing: "info migrate_capabilities") == .run(.queryMigrateCapabilities, .capabilities))
        #expect(try HMPCommand(parsing: "info migrate_parameters") == .run(.queryMigrateParameters, .parameters))
        #expect(try HMPCommand(parsing: "info cpus") == .run(.queryCpusFast, .cpus))
        #expect(try HMPCommand(parsing: "migrate -d unix:/tmp/x.sock") == .run(.migrate(uri: "unix:/tmp/x.sock"), .nothing))
        #expect(try HMPCommand(parsing: "migrate tcp:1.2.3.4:5") == .run(.migrate(uri: "tcp:1.2.3.4:5"), .migrateAttached))
        #expect(try HMPCommand(parsing: #"migrate -d "file:/tmp/a b""#) == .run(.migrate(uri: "file:/tmp/a b"), .nothing))
        #expect(try HMPCommand(parsing: "migrate_incoming tcp:0:4444")
                == .run(.migrateIncoming(uri: "tcp:0:4444", exitOnError: false), .nothing))
        #expect(try HMPCommand(parsing: "migrate_cancel") == .run(.migrateCancel, .nothing))
        // Postcopy recovery: QEMU's `migrate -r`, `migrate_recover` and `migrate_pause`.
        #expect(try HMPCommand(parsing: "migrate -d -r tcp:a:1") == .run(.migrate(uri: "tcp:a:1", resume: true), .nothing))
        #expect(try HMPCommand(parsing: "migrate_recover tcp:0:4445") == .run(.migrateRecover(uri: "tcp:0:4445"), .nothing))
        #expect(try HMPCommand(parsing: "migrate_pause") == .run(.migratePause, .nothing))
        #expect(try HMPCommand(parsing: "migrate_set_capability auto-converge on")
                == .run(.migrateSetCapabilities([.init(capability: "auto-converge", state: true)]), .nothing))
        #expect(try HMPCommand(parsing: "stop") == .run(.stop, .nothing))
        #expect(try HMPCommand(parsing: "c") == .run(.cont, .nothing))
        #expect(try HMPCommand(parsing: "q") == .run(.quit, .nothing))
        #expect(try HMPCommand(parsing: "") == .empty)
        #expect(try HMPCommand(parsing: "help migrate") == .help("migrate"))
    }

    @Test func bandwidthsAreSizesInMiBByDefault() throws {
        func bandwidth(_ text: String) throws -> JSONValue? {
            guard case .run(.migrateSetParameters(let values), _) = try HMPCommand(parsing: "migrate_set_parameter max-bandwidth \(text)")
            else { return nil }
            return values["max-bandwidth"]
        }
        #expect(try bandwidth("1G") == .int(1 << 30))
        #expect(try bandwidth("512M") == .int(512 << 20))
        #expect(try bandwidth("100") == .int(100 << 20))
        #expect(try bandwidth("4096B") == .int(4096))
        #expect(try bandwidth("64k") == .int(64 << 10))
        #expect(try bandwidth("1.5G") == .int(3 << 29))
        #expect(try HMPCommand(parsing: "migrate_set_parameter downtime-limit 500")
                == .run(.migrateSetParameters(["downtime-limit": 500]), .nothing))
        // Not an integer: passed on for the parameters to refuse, naming it, as QMP does.
        #expect(try HMPCommand(parsing: "migrate_set_parameter downtime-limit soon")
                == .run(.migrateSetParameters(["downtime-limit": "soon"]), .nothing))
    }

    @Test func badLinesGetOneLineErrors() {
        for (line, text) in [("foo", "unknown command: 'foo'"),
                             ("info", "info: missing argument 'item'"),
                             ("info bogus", "unknown command: 'info bogus'"),
                             ("migrate", "migrate: missing argument 'uri'"),
                             ("migrate -x tcp:a:1", "migrate: unsupported option -x"),
                             ("migrate_cancel now", "migrate_cancel: extraneous characters at the end of line"),
                             ("migrate_set_capability events", "migrate_set_capability: missing argument 'state'"),
                             ("migrate_set_capability events maybe", "migrate_set_capability: Expected 'on' or 'off'"),
                             ("migrate_set_parameter max-bandwidth", "migrate_set_parameter: missing argument 'value'"),
                             ("migrate_set_parameter max-bandwidth 1Q", "Error: Invalid size 1Q"),
                             ("migrate_set_parameter max-bandwidth -1", "Error: Invalid size -1"),
                             ("migrate_set_parameter max-bandwidth 99999999999999G", "Error: Invalid size 99999999999999G"),
                             ("migrate_start_postcopy now", "migrate_start_postcopy: extraneous characters at the end of line"),
                             ("migrate_recover", "migrate_recover: missing argument 'uri'"),
                             ("migrate_pause now", "migrate_pause: extraneous characters at the end of line"),
                             (#"migrate "unix:/tmp/x"#, "unterminated string literal")] {
            #expect(parse(line) == .failure(HMPError(text)), "\(line)")
        }
    }

    @Test func everyHMPCommandHasHelp() {
        let help = HMPFormatter.help(nil)
        for entry in HMPCommand.table { #expect(help.contains("\n\(entry.name)") || help.hasPrefix(entry.name)) }
        #expect(HMPFormatter.help("c") == "cont|c  -- resume emulation\n")
        #expect(HMPFormatter.help("nope") == "unknown command: 'nope'\n")
    }
}

@Suite struct HMPFormatterTests {
    @Test func statusAsQEMUPrintsIt() {
        #expect(HMPFormatter.text(RunState.running.queryStatus, as: .status) == "VM status: running\n")
        #expect(HMPFormatter.text(RunState.paused.queryStatus, as: .status) == "VM status: paused\n")
        #expect(HMPFormatter.text(RunState.postmigrate.queryStatus, as: .status) == "VM status: paused (postmigrate)\n")
        #expect(HMPFormatter.text(RunState.inmigrate.queryStatus, as: .status) == "VM status: paused (inmigrate)\n")
    }

    @Test func errorsAndCPUs() {
        #expect(HMPFormatter.text(.failure(.generic("There's a migration process in progress")), as: .nothing)
                == "Error: There's a migration process in progress\n")
        let cpus: JSONValue = [["cpu-index": 0, "thread-id": 11], ["cpu-index": 1, "thread-id": 12]]
        #expect(HMPFormatter.text(cpus, as: .cpus, cpuIndex: 1) == "  CPU #0: thread_id=11\n* CPU #1: thread_id=12\n")
    }

    @Test func migrateInfoLayout() {
        let info: JSONValue = ["status": "active", "total-time": 1500, "setup-time": 3, "expected-downtime": 300,
                               "ram": ["transferred": 2_097_152, "remaining": 1_048_576, "total": 268_435_456, "duplicate": 5,
                                       "normal": 512, "normal-bytes": 2_097_152, "dirty-sync-count": 2, "mbps": .double(1234.567),
                                       "page-size": 4096, "pages-per-second": 100, "multifd-bytes": 0, "dirty-pages-rate": 0,
                                       "precopy-bytes": 0, "downtime-bytes": 0]]
        #expect(HMPFormatter.text(info, as: .migrate) == """
            Migration status: active
            total time: 1500 ms
            expected downtime: 300 ms
            setup: 3 ms
            transferred ram: 2048 kbytes
            throughput: 1234.57 mbps
            remaining ram: 1024 kbytes
            total ram: 262144 kbytes
            duplicate: 5 pages
            normal: 512 pages
            normal bytes: 2048 kbytes
            dirty sync count: 2
            page size: 4 kbytes
            multifd bytes: 0 kbytes
            pages-per-second: 100

            """)
        #expect(HMPFormatter.text(["status": "failed", "error-desc": "boom"], as: .migrate).hasPrefix("Migration status: failed (boom)\n"))
        #expect(HMPFormatter.text(.object([:]), as: .migrate) == "")
        #expect(HMPFormatter.text(["status": "setup", "socket-address": [["type": "unix", "path": "/tmp/m"]]], as: .migrate)
                .hasSuffix("socket address: [\n\tunix:/tmp/m\n]\n"))
    }

    @Test func capabilitiesAndParameters() {
        #expect(HMPFormatter.text([["capability": "events", "state": true], ["capability": "xbzrle", "state": false]], as: .capabilities)
                == "events: on\nxbzrle: off\n")
        #expect(HMPFormatter.text(["max-bandwidth": 1024, "downtime-limit": 300, "cpu-throttle-initial": 20], as: .parameters)
                == "cpu-throttle-initial: 20\nmax-bandwidth: 1024 bytes/second\ndowntime-limit: 300 ms\n")
    }
}

@Suite struct QMPSchemaTests {
    let schema = QMPSchema.introspect(parameters: ["max-bandwidth", "downtime-limit"], capabilities: ["events", "xbzrle"])

    var entries: [JSONValue] { if case .array(let list) = schema { list } else { [] } }
    func names(_ metaType: String) -> [String] {
        entries.filter { $0["meta-type"] == .string(metaType) }.compactMap { if case .string(let name)? = $0["name"] { name } else { nil } }
    }

    @Test func commandsAreTheTable() {
        #expect(names("command") == QMPCommand.allNames)
        #expect(Set(names("event")) == ["MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "SHUTDOWN", "GUEST_PANICKED", "BALLOON_CHANGE"])
        // Every listed command decodes (some want arguments); nothing else does.
        for name in QMPCommand.allNames {
            do { _ = try QMPCommand(name: name, arguments: [:]) } catch {
                #expect(error.errorClass != .commandNotFound, "\(name)")
            }
        }
        for name in ["migrate-continue", "query-cpus", "system_reset", "human_monitor_command"] {
            #expect(throws: QMPError(.commandNotFound, "The command \(name) has not been found")) {
                try QMPCommand(name: name, arguments: [:])
            }
        }
    }

    @Test func everyTypeNamedIsDefinedOnce() {
        var defined: [String] = []
        var used: Set<String> = []
        for entry in entries {
            if case .string(let name)? = entry["name"], entry["meta-type"] != "command", entry["meta-type"] != "event" { defined.append(name) }
            for key in ["arg-type", "ret-type", "element-type"] { if case .string(let type)? = entry[key] { used.insert(type) } }
            if entry["meta-type"] == "object", case .array(let members)? = entry["members"] {
                for member in members { if case .string(let type)? = member["type"] { used.insert(type) } }
            }
        }
        #expect(defined.count == Set(defined).count)
        #expect(used.subtracting(defined).isEmpty, "undefined: \(used.subtracting(defined))")
        let hmp = entries.first { $0["name"] == "human-monitor-command" }
        #expect(hmp?["ret-type"] == "str")
        let parameters = entries.first { $0["name"] == "MigrationParameters" }
        #expect(parameters?["members"] == [["name": "max-bandwidth", "type": "int", "default": .null],
                                           ["name": "downtime-limit", "type": "int", "default": .null]])
    }

    @Test func humanMonitorCommandDecodes() throws {
        #expect(try QMPCommand(name: "human-monitor-command", arguments: ["command-line": "info status"])
                == .humanMonitorCommand(commandLine: "info status", cpuIndex: nil))
        #expect(try QMPCommand(name: "human-monitor-command", arguments: ["command-line": "info cpus", "cpu-index": 1])
                == .humanMonitorCommand(commandLine: "info cpus", cpuIndex: 1))
        #expect(throws: QMPError.generic("Parameter 'command-line' is missing")) {
            try QMPCommand(name: "human-monitor-command", arguments: [:])
        }
        #expect(throws: QMPError.generic("Invalid parameter type for 'cpu-index', expected: integer")) {
            try QMPCommand(name: "human-monitor-command", arguments: ["command-line": "x", "cpu-index": "0"])
        }
    }
}
