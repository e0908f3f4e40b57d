/// Why a migration stream was refused.  Every case names the field at fault.
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic
    case unsupportedVersion(UInt32, supported: ClosedRange<UInt32>)
    case invalidFrameKind(UInt16)
    case unsupportedFrameVersion(kind: UInt16, version: UInt16)
    case reservedFieldNotZero
    case payloadTooLarge(UInt64, limit: UInt64)
    case checksumMismatch(kind: UInt16)
    case truncated(String)
    case malformed(String)
    case configurationMismatch(String)
    case pageOutsideBlock(block: String, offset: UInt64)
    case unknownBlock(UInt16)
    case unexpectedFrame(String)
    case outOfSequence(kind: UInt16, sequence: UInt32, expected: UInt32)
    case incomplete(String)

    public var description: String {
        switch self {
        case .badMagic: "not a Ferry migration stream (bad magic)"
        case .unsupportedVersion(let version, let supported):
            "stream version \(version) is not supported (this Ferry reads \(supported.lowerBound)...\(supported.upperBound))"
        case .invalidFrameKind(let kind): "invalid frame kind \(kind)"
        case .unsupportedFrameVersion(let kind, let version): "frame kind \(kind) has unsupported version \(version)"
        case .reservedFieldNotZero: "a reserved frame field is not zero"
        case .payloadTooLarge(let length, let limit): "frame payload of \(length) bytes exceeds the limit of \(limit)"
        case .checksumMismatch(let kind): "checksum mismatch in a frame of kind \(kind): the stream is corrupt"
        case .truncated(let what): "stream truncated: \(what)"
        case .malformed(let what): "malformed stream: \(what)"
        case .configurationMismatch(let what): "configuration mismatch: \(what)"
        case .pageOutsideBlock(let block, let offset): "page at offset \(offset) lies outside RAM block '\(block)' or is not page-aligned"
        case .unknownBlock(let index): "page record names unknown RAM block \(index)"
        case .unexpectedFrame(let what): "unexpected frame: \(what)"
        case .outOfSequence(let kind, let sequence, let expected):
            "frame out of sequence: a frame of kind \(kind) numbered \(sequence) where frame \(expected) was due (a frame was lost, repeated or reordered)"
        case .incomplete(let what): "incomplete stream: \(what)"
        }
    }
}
