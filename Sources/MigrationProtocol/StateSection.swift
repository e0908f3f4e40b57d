/// One piece of migratable state in a `section` frame:
///
///     payload := name (u16 length + UTF-8) | version u16 | state bytes
public struct StateSection: Equatable, Sendable {
    public let name: String
    public let version: UInt16
    public let state: [UInt8]

    public init(name: String, version: UInt16, state: [UInt8]) {
        self.name = name
        self.version = version
        self.state = state
    }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: state.count + name.utf8.count + 4)
        w.string(name)
        w.u16(version)
        w.append(state)
        return w.bytes
    }

    public init(decoding payload: [UInt8]) throws(ProtocolError) {
        var r = WireReader(payload)
        let name = try r.string("section name")
        guard !name.isEmpty else { throw .malformed("empty section name") }
        let version = try r.u16("section \(name) version")
        let state = Array(try r.bytes(r.remaining, "section \(name) state"))
        self.init(name: name, version: version, state: state)
    }
}
