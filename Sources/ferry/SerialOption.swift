import Devices
import Foundation

/// Where COM1 goes (`--serial`): stdio, file:PATH, or none.
enum SerialOption {
    case stdio, none
    case file(String)

    init(parsing text: String) throws {
        switch text {
        case "stdio": self = .stdio
        case "none": self = .none
        case _ where text.hasPrefix("file:") && text.count > 5: self = .file(String(text.dropFirst(5)))
        default: throw FerryFailure.badInput("invalid --serial '\(text)' (expected stdio, file:PATH or none)")
        }
    }

    /// The sink for the guest's serial output and, on stdio, the console it
    /// shares with Ferry's own messages.
    func makeOutput() throws -> (write: @Sendable ([UInt8]) -> Void, console: SharedConsole?) {
        switch self {
        case .none: return ({ _ in }, nil)
        case .stdio:
            let handle = FileHandle.standardOutput
            let console = SharedConsole { bytes in handle.write(Data(bytes)) }
            return ({ console.write($0) }, console)
        case .file(let path):
            guard FileManager.default.createFile(atPath: path, contents: nil),
                  let handle = FileHandle(forWritingAtPath: path) else {
                throw FerryFailure.badInput("cannot create serial output file '\(path)'")
            }
            return ({ bytes in handle.write(Data(bytes)) }, nil)
        }
    }
}
