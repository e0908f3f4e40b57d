import Foundation

/// One QMP connection's protocol state: greeting, capabilities negotiation,
/// then command mode.  Pure: it turns input lines into decoded commands or
/// error replies, and replies into JSON text; the socket layer does the I/O.
public struct QMPSession: Sendable {
    public enum Phase: Equatable, Sendable {
        case negotiating
        case commandMode
    }

    /// What to do with one JSON object from the client.
    public enum Step: Equatable, Sendable {
        /// Execute `command`, then reply echoing `id`.
        case execute(QMPCommand, id: JSONValue?)
        /// Reply at once with this (already encoded) error.
        case reply(String)
    }

    public private(set) var phase: Phase = .negotiating

    public init() {}

    /// The greeting QEMU sends on connect.
    public static func greeting(version: QMPVersion) -> String {
        encode(["QMP": ["version": version.json, "capabilities": []]])
    }

    /// Decodes one complete JSON text from the client.
    public mutating func step(_ text: [UInt8]) -> Step {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(text))
        } catch {
            return .reply(Self.error(QMPError.generic("JSON parse error, invalid JSON input"), id: nil))
        }
        guard case .object(let members) = value else {
            return .reply(Self.error(.generic("QMP input must be a JSON object"), id: nil))
        }
        let id = members["id"]
        if members["exec-oob"] != nil {
            return .reply(Self.error(.generic("QMP input member 'exec-oob' is unexpected (out-of-band execution is not enabled)"), id: id))
        }
        guard case .string(let name)? = members["execute"] else {
            return .reply(Self.error(.generic("QMP input lacks member 'execute'"), id: id))
        }
        if let extra = members.keys.sorted().first(where: { !["execute", "arguments", "id"].contains($0) }) {
            return .reply(Self.error(.generic("QMP input member '\(extra)' is unexpected"), id: id))
        }
        var arguments: [String: JSONValue] = [:]
        switch members["arguments"] {
        case nil: break
        case .object(let object)?: arguments = object
        case _?: return .reply(Self.error(.generic("QMP input member 'arguments' must be an object"), id: id))
        }
        let command: QMPCommand
        do { command = try QMPCommand(name: name, arguments: arguments) } catch {
            return .reply(Self.error(error, id: id))
        }
        switch (phase, command) {
        case (.negotiating, .qmpCapabilities):
            phase = .commandMode
            return .reply(Self.success(.object([:]), id: id))
        case (.negotiating, _):
            return .reply(Self.error(QMPError(.commandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'"), id: id))
        case (.commandMode, .qmpCapabilities):
            return .reply(Self.error(QMPError(.commandNotFound, "Capabilities negotiation is already complete, command ignored"), id: id))
        case (.commandMode, _):
            return .execute(command, id: id)
        }
    }

    public static func success(_ value: JSONValue, id: JSONValue?) -> String {
        var members: [String: JSONValue] = ["return": value]
        if let id { members["id"] = id }
        return encode(.object(members))
    }

    public static func error(_ error: QMPError, id: JSONValue?) -> String {
        var members: [String: JSONValue] = ["error": ["class": .string(error.errorClass.rawValue), "desc": .string(error.desc)]]
        if let id { members["id"] = id }
        return encode(.object(members))
    }

    public static func encode(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }
}

/// The version Ferry reports, in QEMU's `query-version` shape.
public struct QMPVersion: Equatable, Sendable {
    public let major: Int, minor: Int, micro: Int
    public let package: String

    public init(major: Int, minor: Int, micro: Int, package: String) {
        (self.major, self.minor, self.micro, self.package) = (major, minor, micro, package)
    }

    public var json: JSONValue {
        ["qemu": ["major": .int(Int64(major)), "minor": .int(Int64(minor)), "micro": .int(Int64(micro))],
         "package": .string(package)]
    }
}
