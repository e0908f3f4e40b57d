/// One migration stream as `ferry analyze` saw it: a stream file, or a
/// mapped-ram file's device state.
public struct StreamAnalysis: Encodable, Equatable, Sendable {
    public struct Channel: Encodable, Equatable, Sendable {
        public var role: String
        public var index: UInt16
        /// The 16 random bytes the source picked for the migration, in hex.
        public var migrationID: String
    }

    public struct Block: Encodable, Equatable, Sendable {
        public var name: String
        public var bytes: UInt64
        public var pageSize: UInt32
    }

    public struct Configuration: Encodable, Equatable, Sendable {
        public var vcpus: UInt32
        public var blocks: [Block]
    }

    public struct Plan: Encodable, Equatable, Sendable {
        public var multifd: UInt16
        public var compression: String
        public var mappedRAM: Bool
    }

    public struct Residency: Encodable, Equatable, Sendable {
        public var block: String
        public var chunks: Int
        public var residentChunks: Int
    }

    /// Page records for one block, over every `pages` frame.
    public struct Pages: Encodable, Equatable, Sendable {
        public var block: String
        public var normal: UInt64 = 0
        public var zero: UInt64 = 0
    }

    public struct Section: Encodable, Equatable, Sendable {
        public var name: String
        public var version: UInt16
        /// Bytes of state (the section's payload less its name and version).
        public var bytes: Int
        /// Where its frame starts, from the file's base.
        public var offset: UInt64
    }

    public struct End: Encodable, Equatable, Sendable {
        /// Frames before the end, as the sender counted them (checked against what was read).
        public var frames: UInt64
        public var digest: String
    }

    public struct CorruptFrame: Encodable, Equatable, Sendable {
        /// The frame's number in the stream (its sequence).
        public var index: UInt64
        public var kind: String
        /// Where the frame starts, from the file's base.
        public var offset: UInt64
        public var reason: String
    }

    public struct CorruptPage: Encodable, Equatable, Sendable {
        public var block: String
        /// Bytes into the block.
        public var offset: UInt64
    }

    public var version: UInt32 = 0
    public var channel: Channel?
    public var configuration: Configuration?
    public var residency: [Residency]?
    public var channelPlan: Plan?
    /// Frames read (the end included), and per kind.
    public var frameCount: UInt64 = 0
    public var frames: [String: UInt64] = [:]
    public var pages: [Pages] = []
    public var sections: [Section] = []
    public var end: End?
    /// Bytes of the stream read, from its header to the end of its last frame.
    public var bytes: UInt64 = 0
    /// Bytes after the end frame (nothing reads them).
    public var trailingBytes: UInt64 = 0
    public var corruptFrames: [CorruptFrame] = []
    public var corruptFrameCount = 0
    /// Pages whose last copy in the stream does not match its checksum: a restore refuses the file.
    public var corruptPages: [CorruptPage] = []
    public var corruptPageCount = 0
    /// Copies of a page that did not match their checksum but were sent again
    /// later (a live save whose guest wrote the page as it went out): harmless.
    public var resentMismatches = 0

    public init() {}

    public var corruptionCount: Int { corruptFrameCount + corruptPageCount }
}
