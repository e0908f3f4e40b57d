import HostIO
import Migration
import QMP

extension Machine {
    public static let version = QMPVersion(major: 10, minor: 0, micro: 0, package: "ferry 0.1")

    /// Executes one QMP command against this machine.  The reply value, or the error to send.
    /// `descriptor` is the one the client passed for a command that takes one
    /// (`QMPCommand.takesDescriptor`); a command that fails leaves it to the caller to close.
    public func execute(_ command: QMPCommand, descriptor: ReceivedDescriptor? = nil) -> Result<JSONValue, QMPError> {
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
        case .migrate(let uri, let resume):
            return Result { () throws(QMPError) in
                if resume { try resumeMigration(to: uri) } else { try startMigration(to: uri) }
                return .object([:])
            }
        case .migratePause:
            return Result { () throws(QMPError) in try pauseMigration(); return .object([:]) }
        case .migrateRecover(let uri):
            return Result { () throws(QMPError) in try recoverIncoming(from: uri); return .object([:]) }
        case .migrateIncoming(let uri, let exitOnError):
            return Result { () throws(QMPError) in
                try startIncoming(from: uri, autostart: autostart, onFailure: { [self] reason in if exitOnError { failIncoming(reason) } })
                return .object([:])
            }
        case .migrateCancel:
            return Result { () throws(QMPError) in try cancelMigration(); return .object([:]) }
        case .migrateStartPostcopy:
            return Result { () throws(QMPError) in try startPostcopy(); return .object([:]) }
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
        case .queryQMPSchema:
            return .success(QMPSchema.introspect(parameters: MigrationParameters.names, textParameters: MigrationParameters.textNames,
                                                 capabilities: MigrationCapabilities.supported + MigrationCapabilities.unsupported))
        case .humanMonitorCommand(let line, let cpuIndex):
            if let cpuIndex, cpuIndex < 0 || cpuIndex >= Int64(vcpus.count) { return .failure(.generic("Invalid CPU index")) }
            return .success(.string(human(line, cpuIndex: cpuIndex ?? 0, descriptor: descriptor)))
        case .getfd(let name):
            return Result { () throws(QMPError) in try nameDescriptor(name, descriptor); return .object([:]) }
        case .closefd(let name):
            return Result { () throws(QMPError) in try closeNamedDescriptor(name); return .object([:]) }
        case .addFd(let fdsetID, let opaque):
            return Result { () throws(QMPError) in try addDescriptor(descriptor, toFdset: fdsetID, opaque: opaque) }
        case .removeFd(let fdsetID, let fd):
            return Result { () throws(QMPError) in try removeDescriptor(fdset: fdsetID, fd: fd); return .object([:]) }
        case .queryFdsets:
            return .success(fdsetsJSON)
        case .balloon(let value):
            // QEMU's order and texts: no device first, then the value.  As in QEMU, a device
            // whose driver has not started takes the target; the driver finds it when it does.
            guard let balloon else { return .failure(QMPError(.deviceNotActive, "No balloon device has been activated")) }
            guard value > 0 else { return .failure(.generic("Parameter 'value' expects a size")) }
            balloon.setTarget(bytes: UInt64(value))
            return .success(.object([:]))
        case .queryBalloon:
            guard let balloon else { return .failure(QMPError(.deviceNotActive, "No balloon device has been activated")) }
            return .success(["actual": .int(Int64(balloon.actualBytes))])
        }
    }

    /// One HMP line: parsed into the QMP command it names, run by `execute`,
    /// its result printed from the same JSON.  Errors are text, as in QEMU.
    func human(_ line: String, cpuIndex: Int64, descriptor: ReceivedDescriptor? = nil) -> String {
        let parsed: HMPCommand
        do throws(HMPError) { parsed = try HMPCommand(parsing: line) } catch { return error.text + "\n" }
        switch parsed {
        case .empty: return ""
        case .help(let topic): return HMPFormatter.help(topic)
        case .run(let command, let output):
            return HMPFormatter.text(execute(command, descriptor: descriptor), as: output, cpuIndex: cpuIndex)
        }
    }

    /// What a command that succeeded does once its reply has been sent (nil:
    /// nothing): `quit` stops the machine (emitting SHUTDOWN) only after the
    /// client has its `{"return": {}}`.
    public func afterReply(to command: QMPCommand) -> (@Sendable () -> Void)? {
        switch command {
        case .quit: return { self.quit() }
        case .humanMonitorCommand(let line, _):
            if case .run(.quit, _)? = try? HMPCommand(parsing: line) { return { self.quit() } }
            return nil
        default: return nil
        }
    }
}
