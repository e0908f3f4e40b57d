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
        }
    }

    /// What a command does once its reply has been sent: `quit` stops the machine
    /// (emitting SHUTDOWN) only after the client has its `{"return": {}}`.
    public func afterReply(to command: QMPCommand) {
        if command == .quit { quit() }
    }
}
