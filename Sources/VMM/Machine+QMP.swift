import QMP

extension Machine {
    public static let version = QMPVersion(major: 10, minor: 0, micro: 0, package: "ferry 0.1")

    /// Executes one QMP command against this machine.  The reply value, or the error to send.
    public func execute(_ command: QMPCommand) -> Result<JSONValue, QMPError> {
        switch command {
        case .qmpCapabilities:
            return .success(.object([:]))
        case .queryVersion:
            return .success(Self.version.json)
        case .queryStatus:
            return .success(state.queryStatus)
        case .queryCommands:
            return .success(.array(QMPCommand.allNames.map { ["name": .string($0)] }))
        case .queryCpusFast:
            return .success(.array(vcpus.map { vcpu in
                ["cpu-index": .int(Int64(vcpu.index.rawValue)),
                 "qom-path": .string("/machine/unattached/device[\(vcpu.index.rawValue)]"),
                 "thread-id": .int(Int64(vcpu.threadID)),
                 "target": "x86_64",
                 "props": ["core-id": .int(Int64(vcpu.index.rawValue)), "thread-id": 0, "socket-id": 0]]
            }))
        case .stop:
            pause()
            return .success(.object([:]))
        case .cont:
            do { try resume() } catch { return .failure(.generic(error.description)) }
            return .success(.object([:]))
        case .quit:
            // Reply first, as QEMU does: the machine stops in `afterReply`.
            return .success(.object([:]))
        case .migrate(let uri):
            return Result { () throws(QMPError) in try startMigration(to: uri); return .object([:]) }
        case .migrateIncoming(let uri, let exitOnError):
            return Result { () throws(QMPError) in
                try startIncoming(from: uri, autostart: autostart, onFailure: { [self] reason in if exitOnError { failIncoming(reason) } })
                return .object([:])
            }
        case .migrateCancel:
            cancelMigration()
            return .success(.object([:]))
        case .migrateSetCapabilities(let list):
            return Result { () throws(QMPError) in
                try setMigrationCapabilities(list.map { ($0.capability, $0.state) })
                return .object([:])
            }
        case .queryMigrateCapabilities:
            return .success(.array(migrationCapabilities.states.map { ["capability": .string($0.name), "state": .bool($0.enabled)] }))
        case .migrateSetParameters(let arguments):
            return Result { () throws(QMPError) in try setMigrationParameters(arguments); return .object([:]) }
        case .queryMigrateParameters:
            return .success(migrationParametersJSON)
        case .queryMigrate:
            return .success(queryMigrateJSON)
        }
    }

    /// What a command does once its reply has been sent: `quit` stops the machine
    /// (emitting SHUTDOWN) only after the client has its `{"return": {}}`.
    public func afterReply(to command: QMPCommand) {
        if command == .quit { quit() }
    }
}
