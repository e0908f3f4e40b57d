/// An asynchronous QMP event, with QEMU's names and timestamp format.
public struct QMPEvent: Equatable, Sendable {
    public let name: String
    public let data: JSONValue?
    /// Wall-clock time of the event, split as QEMU does.
    public let seconds: Int64
    public let microseconds: Int64

    public init(name: String, data: JSONValue? = nil, seconds: Int64, microseconds: Int64) {
        self.name = name
        self.data = data
        self.seconds = seconds
        self.microseconds = microseconds
    }

    public var json: JSONValue {
        var members: [String: JSONValue] = [
            "event": .string(name),
            "timestamp": ["seconds": .int(seconds), "microseconds": .int(microseconds)],
        ]
        if let data { members["data"] = data }
        return .object(members)
    }
}
