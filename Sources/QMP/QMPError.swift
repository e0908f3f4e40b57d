/// A QMP error reply: QEMU's error classes, and a description that names the
/// argument at fault.
public struct QMPError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Class: String, Sendable {
        case genericError = "GenericError"
        case commandNotFound = "CommandNotFound"
        case deviceNotActive = "DeviceNotActive"
        case deviceNotFound = "DeviceNotFound"
    }

    public let errorClass: Class
    public let desc: String

    public init(_ errorClass: Class, _ desc: String) {
        self.errorClass = errorClass
        self.desc = desc
    }

    public static func generic(_ desc: String) -> QMPError { QMPError(.genericError, desc) }
    public var description: String { "\(errorClass.rawValue): \(desc)" }
}
