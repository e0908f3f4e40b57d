/// What `ferry analyze` found in one file: which kind it is, its sizes, the
/// stream or mapped-ram details, and the verdict.  Encoded as the `--json`
/// object (keys documented in docs/analyze.md).
public struct FileAnalysis: Encodable, Equatable, Sendable {
    public enum Kind: String, Encodable, Sendable {
        /// A sequential migration stream ("FERRYMIG"): a plain `file:` save.
        case stream
        /// A mapped-ram file ("FERRYMRF"): capability `mapped-ram`.
        case mappedRAM = "mapped-ram"
        /// Neither: too short, or another magic.
        case unknown
    }

    public enum Status: String, Encodable, Sendable {
        /// Everything decoded and every checksum matched.
        case ok
        /// It decoded, but pages or frames do not match their checksums (listed).
        case corrupt
        /// The analysis stopped at a structural error (`error`).
        case error

        /// `ferry analyze`'s exit status: 0, 2 and 1.
        public var exitStatus: Int32 {
            switch self {
            case .ok: 0
            case .corrupt: 2
            case .error: 1
            }
        }
    }

    /// The file as named on the command line (set by the caller), and the base offset the analysis read it from.
    public var path: String?
    public var offset: UInt64 = 0
    public var kind: Kind = .unknown
    /// The file's length from its base (`--offset`).
    public var fileBytes: UInt64 = 0
    /// Bytes the file system allocated for the whole file (`st_blocks`), if known.
    public var allocatedBytes: UInt64?
    /// A stream file's stream.
    public var stream: StreamAnalysis?
    /// A mapped-ram file's header, blocks and pages (its device state is in `mappedRAM.deviceState`).
    public var mappedRAM: MappedRAMAnalysis?
    public var status: Status = .ok
    /// The structural error the analysis stopped at, if any.
    public var error: String?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case path, offset, kind, fileBytes, allocatedBytes, stream, mappedRAM, status, error
    }

    /// Every key, `null` where there is nothing to say (the nested objects leave theirs out instead).
    public func encode(to encoder: any Encoder) throws {
        var keys = encoder.container(keyedBy: CodingKeys.self)
        try keys.encode(path, forKey: .path)
        try keys.encode(offset, forKey: .offset)
        try keys.encode(kind, forKey: .kind)
        try keys.encode(fileBytes, forKey: .fileBytes)
        try keys.encode(allocatedBytes, forKey: .allocatedBytes)
        try keys.encode(stream, forKey: .stream)
        try keys.encode(mappedRAM, forKey: .mappedRAM)
        try keys.encode(status, forKey: .status)
        try keys.encode(error, forKey: .error)
    }

    /// Corrupt pages and frames found, everywhere in the file.
    public var corruptionCount: Int {
        (stream?.corruptionCount ?? 0) + (mappedRAM?.corruptionCount ?? 0)
    }
}

/// Why an analysis stopped: the first structural error, in words.
struct AnalysisStop: Error, Equatable {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Lists of corrupt items are cut at this many entries (their counts are not):
/// a file of garbage cannot make the report grow without bound.
enum ReportLimits {
    static let listed = 1000
}

extension UInt64 {
    /// `0x` and 16 hex digits.
    var hex: String {
        let digits = String(self, radix: 16)
        return "0x" + String(repeating: "0", count: 16 - digits.count) + digits
    }
}
