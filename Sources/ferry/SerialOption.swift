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

    /// The sink for the guest's serial output.
    func makeOutput() throws -> @Sendable ([UInt8]) -> Void {
        switch self {
        case .none: return { _ in }
        case .stdio:
            let handle = FileHandle.standardOutput
            return { bytes in handle.write(Data(bytes)) }
        case .file(let path):
            guard FileManager.default.createFile(atPath: path, contents: nil),
                  let handle = FileHandle(forWritingAtPath: path) else {
                throw FerryFailure.badInput("cannot create serial output file '\(path)'")
            }
            return { bytes in handle.write(Data(bytes)) }
        }
    }
}
