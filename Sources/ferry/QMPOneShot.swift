import Migration
import Transport

/// A minimal QMP client for the demo: connects, reads the greeting, runs
/// commands without arguments one after another, each waiting for its reply.
enum QMPOneShot {
    static func send(_ commands: [String], to path: String) throws {
        let channel = try Transport.connect(.unix(path: path))
        defer { channel.close() }
        _ = try readLine(channel)
        for command in commands {
            try channel.write(Array("{\"execute\": \"\(command)\"}\n".utf8))
            var reply = try readLine(channel)
            while reply.hasPrefix("{\"event\"") { reply = try readLine(channel) }
            guard reply.contains("\"return\"") else { throw FerryFailure.runtime("QMP \(command) failed: \(reply)") }
        }
    }

    static func readLine(_ channel: DescriptorChannel) throws -> String {
        var line: [UInt8] = []
        var byte = [UInt8](repeating: 0, count: 1)
        while true {
            try channel.readExactly(1, into: &byte, at: 0)
            if byte[0] == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(byte[0])
        }
    }
}
