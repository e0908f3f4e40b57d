import Glibc
import Migration
import QMP
import QMPSocket

/// libFuzzer target `qmp`: the fuzz input is what a client sends on the QMP
/// socket.  It goes through the same path as on a real connection, without a
/// socket: `JSONTextFramer` (in two reads, split in the middle, so texts
/// cross a read boundary) splits it into JSON texts, one `QMPSession` decodes
/// each (negotiation, then commands), and the commands' arguments go through
/// the parsers the VMM applies them with (`MigrationURI`, `MigrationParameters`,
/// `MigrationCapabilities`, and `HMPCommand` for `human-monitor-command` lines).  Errors and error replies are expected; a trap or
/// a crash is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data = unsafe data, size > 0 else { return 0 }
    // SAFETY: libFuzzer hands us `size` readable bytes at `data` for the duration of this call.
    let bytes = unsafe Array(UnsafeBufferPointer(start: data, count: size))
    QMPTarget.run(bytes)
    return 0
}

enum QMPTarget {
    /// `FERRY_FUZZ_EXPLAIN=1 FuzzQMP FILE...` prints each reply and command.
    static let explain = unsafe getenv("FERRY_FUZZ_EXPLAIN") != nil

    static func run(_ bytes: [UInt8]) {
        var framer = JSONTextFramer()
        var session = QMPSession()
        var parameters = MigrationParameters()
        var capabilities = MigrationCapabilities()
        let half = bytes.count / 2
        for part in [bytes[..<half], bytes[half...]] {
            framer.append(part)
            while true {
                let text: JSONText?
                do { text = try framer.next() } catch {
                    if explain { print("framer: \(error)") }
                    return
                }
                guard let text else { break }
                step(text, &session, &parameters, &capabilities)
            }
        }
    }

    static func step(_ text: JSONText, _ session: inout QMPSession,
                     _ parameters: inout MigrationParameters, _ capabilities: inout MigrationCapabilities) {
        switch session.step(text.bytes) {
        case .reply(let reply):
            if explain { print("reply: \(reply)") }
        case .execute(let command, let id):
            if explain { print("execute: \(command) id \(String(describing: id))") }
            apply(command, &parameters, &capabilities)
        }
    }

    /// What `Machine` does with a command's arguments before acting on them.
    static func apply(_ command: QMPCommand, _ parameters: inout MigrationParameters,
                      _ capabilities: inout MigrationCapabilities) {
        switch command {
        case .migrate(let uri, _), .migrateIncoming(let uri, _), .migrateRecover(let uri):
            let parsed = try? MigrationURI(parsing: uri)
            if explain { print("  uri: \(String(describing: parsed))") }
        case .migrateSetParameters(let arguments):
            for (name, value) in arguments.sorted(by: { $0.key < $1.key }) {
                guard case .int(let number) = value else { continue }
                try? parameters.set(name, to: number)
            }
            _ = QMPSession.success(.object(Dictionary(uniqueKeysWithValues: parameters.values.map {
                ($0.name, JSONValue.int(Int64(clamping: $0.value)))
            })), id: nil)
        case .migrateSetCapabilities(let states):
            for state in states { try? capabilities.set(state.capability, to: state.state) }
        case .humanMonitorCommand(let line, _):
            // An HMP line becomes a QMP command, applied the same way; its text is formatted from a result.
            switch Result(catching: { () throws(HMPError) in try HMPCommand(parsing: line) }) {
            case .success(.run(let inner, let output)):
                if explain { print("  hmp: \(inner)") }
                apply(inner, &parameters, &capabilities)
                _ = HMPFormatter.text(.success(.object([:])), as: output)
            case .success: break
            case .failure(let error): if explain { print("  hmp: \(error.text)") }
            }
        default:
            break
        }
    }
}
