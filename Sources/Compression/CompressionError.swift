/// Why zstd compression or decompression failed.  Decoding errors say what
/// was wrong with the input; the decompressor checks the frame before it
/// writes a byte, so a refused input never grows the output.
public enum CompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A compression level outside QEMU's `multifd-zstd-level` range.
    case invalidLevel(Int, supported: ClosedRange<Int>)
    /// A decoder window limit outside what zstd supports.
    case invalidWindowLog(Int, supported: ClosedRange<Int>)
    /// zstd could not allocate its context (`ZSTD_createCCtx`, `ZSTD_createDCtx`).
    case outOfMemory(operation: String)
    /// The bytes appended to a frame do not add up to the size pledged at `begin(totalBytes:)`.
    case pledgedSizeMismatch(pledged: Int, appended: Int)
    /// zstd failed where it should not (compression side): the call and zstd's own text.
    case library(operation: String, reason: String)

    /// The input does not start with a zstd frame (a skippable frame counts as not one).
    case notAZstdFrame(magic: UInt32)
    /// The input ends inside its frame.
    case truncated
    /// A frame Ferry never produces: a reserved header bit, a dictionary.
    case unsupportedFrame(String)
    /// The frame header does not state the decompressed size.
    case missingContentSize
    /// The frame header states a decompressed size other than the one expected.
    case contentSizeMismatch(declared: UInt64, expected: Int)
    /// The frame carries no content checksum, so its output could not be verified.
    case missingChecksum
    /// The frame asks for a larger window than the decoder's limit.
    case windowTooLarge(windowSize: UInt64, limit: UInt64)
    /// Decoding would produce more than the expected bytes (a lying header, a bomb).
    case outputExceedsExpectedSize(expected: Int)
    /// Decoding produced a size other than the expected one.
    case outputSizeMismatch(produced: Int, expected: Int)
    /// Bytes that are not a frame follow the frame.
    case trailingBytes(count: Int)
    /// A second frame (zstd or skippable) follows the first.
    case multipleFrames
    /// The decompressed bytes do not match the frame's checksum.
    case checksumMismatch
    /// zstd found the frame corrupt: its own text.
    case corrupt(String)

    public var description: String {
        switch self {
        case .invalidLevel(let level, let supported):
            "zstd level \(level) is out of range (multifd-zstd-level takes \(supported.lowerBound)...\(supported.upperBound))"
        case .invalidWindowLog(let log, let supported):
            "zstd window log \(log) is out of range (\(supported.lowerBound)...\(supported.upperBound))"
        case .outOfMemory(let operation): "zstd could not allocate memory (\(operation))"
        case .pledgedSizeMismatch(let pledged, let appended):
            "zstd frame was begun for \(pledged) bytes but \(appended) were appended"
        case .library(let operation, let reason): "zstd failed in \(operation): \(reason)"
        case .notAZstdFrame(let magic):
            "compressed data is not a zstd frame (magic 0x\(String(magic, radix: 16)))"
        case .truncated: "compressed data is truncated: it ends inside its zstd frame"
        case .unsupportedFrame(let what): "unsupported zstd frame: \(what)"
        case .missingContentSize: "zstd frame does not declare its decompressed size"
        case .contentSizeMismatch(let declared, let expected):
            "zstd frame declares \(declared) decompressed bytes where \(expected) were expected"
        case .missingChecksum: "zstd frame has no content checksum"
        case .windowTooLarge(let windowSize, let limit):
            "zstd frame needs a \(windowSize)-byte window, more than the limit of \(limit)"
        case .outputExceedsExpectedSize(let expected):
            "zstd frame decompresses to more than the expected \(expected) bytes"
        case .outputSizeMismatch(let produced, let expected):
            "zstd frame decompressed to \(produced) bytes where \(expected) were expected"
        case .trailingBytes(let count): "\(count) bytes of garbage follow the zstd frame"
        case .multipleFrames: "more than one zstd frame where one was expected"
        case .checksumMismatch: "zstd content checksum mismatch: the compressed data is corrupt"
        case .corrupt(let reason): "corrupt zstd frame: \(reason)"
        }
    }
}
