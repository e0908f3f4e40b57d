/// The header of a zstd frame, parsed without zstd (RFC 8878, section 3.1.1.1).
///
/// The decompressor reads it to refuse a frame before decoding: a declared
/// size other than the expected one, no checksum, an oversized window.  It is
/// parsed here rather than with `ZSTD_getFrameHeader`, which is zstd's
/// experimental API and carries no ABI promise in a shared library.
struct ZstdFrameHeader: Equatable {
    /// The magic number that starts every zstd frame (little-endian on the wire).
    static let magic: UInt32 = 0xFD2F_B528
    /// Skippable frames use the sixteen magics 0x184D2A50...0x184D2A5F.
    static let skippableMagicMask: UInt32 = 0xFFFF_FFF0
    static let skippableMagic: UInt32 = 0x184D_2A50

    /// Decompressed size in bytes, or nil when the header does not state it.
    var contentSize: UInt64?
    /// The window the decoder needs (for a single-segment frame, the content size).
    var windowSize: UInt64
    /// Whether a 4-byte XXH64-based checksum of the content ends the frame.
    var hasChecksum: Bool
    /// The dictionary the frame needs; 0 for none.
    var dictionaryID: UInt32
    /// Bytes from the magic to the first block header.
    var byteCount: Int

    /// Whether `bytes` start with a zstd or skippable frame's magic.
    static func startsFrame(_ bytes: Span<UInt8>) -> Bool {
        guard bytes.count >= 4 else { return false }
        let magic = littleEndian(bytes, at: 0, count: 4)
        return UInt32(magic) == Self.magic || UInt32(magic) & skippableMagicMask == skippableMagic
    }

    /// Parses the header at the start of `bytes`.
    ///
    /// - Throws: ``CompressionError/truncated`` if `bytes` end inside the header,
    ///   ``CompressionError/notAZstdFrame(magic:)`` for another magic (skippable frames too),
    ///   ``CompressionError/unsupportedFrame(_:)`` for a reserved bit.
    init(parsing bytes: Span<UInt8>) throws(CompressionError) {
        guard bytes.count >= 5 else { throw .truncated }
        let magic = UInt32(Self.littleEndian(bytes, at: 0, count: 4))
        guard magic == Self.magic else { throw .notAZstdFrame(magic: magic) }
        let descriptor = bytes[4]
        guard descriptor & 0x08 == 0 else { throw .unsupportedFrame("reserved bit set in the frame header descriptor") }
        let singleSegment = descriptor & 0x20 != 0
        let contentSizeFlag = Int(descriptor >> 6)
        let dictionaryIDBytes = [0, 1, 2, 4][Int(descriptor & 0x03)]
        let contentSizeBytes = contentSizeFlag == 0 ? (singleSegment ? 1 : 0) : [0, 2, 4, 8][contentSizeFlag]
        var position = 5
        var windowSize: UInt64 = 0
        if !singleSegment {
            guard bytes.count > position else { throw .truncated }
            let windowDescriptor = bytes[position]
            let windowBase = UInt64(1) << (10 + UInt64(windowDescriptor >> 3))
            windowSize = windowBase + windowBase / 8 * UInt64(windowDescriptor & 0x07)
            position += 1
        }
        guard bytes.count >= position + dictionaryIDBytes + contentSizeBytes else { throw .truncated }
        dictionaryID = UInt32(Self.littleEndian(bytes, at: position, count: dictionaryIDBytes))
        position += dictionaryIDBytes
        let rawContentSize = Self.littleEndian(bytes, at: position, count: contentSizeBytes)
        position += contentSizeBytes
        contentSize = switch contentSizeBytes {
        case 0: nil
        case 2: rawContentSize + 256    // the 2-byte field is offset by 256 (RFC 8878, 3.1.1.1.4)
        default: rawContentSize
        }
        self.windowSize = singleSegment ? contentSize ?? 0 : windowSize   // single segment: the window is the content
        hasChecksum = descriptor & 0x04 != 0
        byteCount = position
    }

    private static func littleEndian(_ bytes: Span<UInt8>, at offset: Int, count: Int) -> UInt64 {
        var value: UInt64 = 0
        for index in 0..<count { value |= UInt64(bytes[offset + index]) << (8 * UInt64(index)) }
        return value
    }
}
