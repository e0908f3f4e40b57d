/// Decompresses zstd frames of a known size, reusing one zstd context, and
/// refuses anything but exactly one well-formed frame of that size.
///
/// Corresponds to the receiving side of QEMU's `multifd-compression: zstd`.
/// Make one per channel thread (it is not `Sendable`).  The input is hostile
/// until proven otherwise, so before writing a byte ``decompress(_:into:)``
/// checks, from the frame header: the zstd magic, the declared size equal to
/// the expected one, a content checksum present, a window within
/// ``maxWindowLog``, no dictionary; and, from the block headers, that the
/// frame is complete and nothing follows it.  Decoding then runs in one pass
/// straight into the caller's buffer of exactly the expected size
/// (`ZSTD_decompressDCtx`), so it allocates nothing and cannot write past the
/// buffer however the blocks lie; a frame that decodes to more, or to fewer
/// bytes than its header declared, or whose checksum fails, is refused.
public final class ZstdDecompressor {
    /// The largest window a frame may ask for by default: 32 MiB (`1 << 25`).
    ///
    /// That is the largest window ``ZstdCompressor`` uses at any level up to 20
    /// (zstd's level 20 uses 2^25, levels 1...19 at most 2^23; a frame
    /// smaller than its level's window gets a window no larger than itself).
    /// Ferry decodes in one pass into the output, which needs no window buffer,
    /// so the limit is defence in depth: a frame needing a larger window is not
    /// one Ferry's sender makes.  zstd's own default is 2^27.
    public static let defaultMaxWindowLog = 25

    /// The decoder refuses frames whose window exceeds `1 << maxWindowLog`.
    public let maxWindowLog: Int

    private let context: DecompressionContext

    /// Creates a decompressor (`ZSTD_createDCtx`) refusing windows above
    /// `1 << maxWindowLog` (also set as `ZSTD_d_windowLogMax`).
    ///
    /// - Throws: ``CompressionError/invalidWindowLog(_:supported:)`` outside zstd's
    ///   10...31; ``CompressionError/outOfMemory(operation:)``.
    public init(maxWindowLog: Int = ZstdDecompressor.defaultMaxWindowLog) throws(CompressionError) {
        guard zstdWindowLogs.contains(maxWindowLog) else { throw .invalidWindowLog(maxWindowLog, supported: zstdWindowLogs) }
        self.maxWindowLog = maxWindowLog
        context = try DecompressionContext(maxWindowLog: maxWindowLog)
    }

    /// Decompresses the single zstd frame `input` into `output`, which must be
    /// exactly the frame's decompressed size (one batch of guest pages, say).
    ///
    /// On failure `output` may hold partial data; do not use it.
    ///
    /// - Throws: ``CompressionError``: see ``decompress(_:expectedSize:into:)``.
    public func decompress(_ input: Span<UInt8>, into output: inout MutableSpan<UInt8>) throws(CompressionError) {
        let (frameSize, windowSize) = try check(input, expectedSize: output.count)
        let expected = output.count
        let result = unsafe input.withUnsafeBytes { source in
            unsafe output.withUnsafeMutableBytes { destination in
                unsafe context.decompress(UnsafeRawBufferPointer(rebasing: source[0..<frameSize]), into: destination)
            }
        }
        let produced: Int
        switch result {
        case .value(let count): produced = count
        case .truncatedInput: throw .truncated
        case .outputTooSmall: throw .outputExceedsExpectedSize(expected: expected)
        case .checksumWrong: throw .checksumMismatch
        case .windowTooLarge: throw .windowTooLarge(windowSize: windowSize, limit: UInt64(1) << UInt64(maxWindowLog))
        case .outOfMemory: throw .outOfMemory(operation: "ZSTD_decompressDCtx")
        case .other(let reason): throw .corrupt(reason)
        }
        guard produced == expected else { throw .outputSizeMismatch(produced: produced, expected: expected) }
    }

    /// Decompresses the single zstd frame `input` into `output`, which ends up
    /// holding exactly `expectedSize` bytes.
    ///
    /// `output`'s storage is reused: pass the same array each time and, once it
    /// has grown to the batch size, no call allocates.  Nothing is allocated
    /// for an input refused by its header, and never more than `expectedSize`.
    /// On failure `output` is left empty (its capacity kept), never partial.
    ///
    /// - Throws: ``CompressionError/truncated``, ``CompressionError/notAZstdFrame(magic:)``,
    ///   ``CompressionError/unsupportedFrame(_:)``, ``CompressionError/missingContentSize``,
    ///   ``CompressionError/contentSizeMismatch(declared:expected:)``,
    ///   ``CompressionError/missingChecksum``, ``CompressionError/windowTooLarge(windowSize:limit:)``,
    ///   ``CompressionError/trailingBytes(count:)``, ``CompressionError/multipleFrames``
    ///   (all before decoding); then ``CompressionError/outputExceedsExpectedSize(expected:)``,
    ///   ``CompressionError/outputSizeMismatch(produced:expected:)``,
    ///   ``CompressionError/checksumMismatch`` or ``CompressionError/corrupt(_:)``.
    public func decompress(_ input: Span<UInt8>, expectedSize: Int, into output: inout [UInt8]) throws(CompressionError) {
        precondition(expectedSize >= 0, "cannot expect \(expectedSize) bytes")
        do {
            _ = try check(input, expectedSize: expectedSize)   // before the output grows
            if output.count != expectedSize {
                output.removeAll(keepingCapacity: true)
                output.append(contentsOf: repeatElement(0, count: expectedSize))
            }
            var span = output.mutableSpan
            try decompress(input, into: &span)
        } catch {
            output.removeAll(keepingCapacity: true)
            throw error
        }
    }

    /// Checks everything that can be checked without decoding; returns the
    /// frame's compressed size (all of `input`: trailing bytes are refused) and window.
    private func check(_ input: Span<UInt8>, expectedSize: Int) throws(CompressionError) -> (frameSize: Int, windowSize: UInt64) {
        let header = try ZstdFrameHeader(parsing: input)
        guard header.dictionaryID == 0 else { throw .unsupportedFrame("needs dictionary \(header.dictionaryID)") }
        guard let declared = header.contentSize else { throw .missingContentSize }
        guard declared == UInt64(expectedSize) else { throw .contentSizeMismatch(declared: declared, expected: expectedSize) }
        guard header.hasChecksum else { throw .missingChecksum }
        let windowLimit = UInt64(1) << UInt64(maxWindowLog)
        guard header.windowSize <= windowLimit else { throw .windowTooLarge(windowSize: header.windowSize, limit: windowLimit) }
        let sized = unsafe input.withUnsafeBytes { unsafe context.frameSize($0) }
        let frameSize: Int
        switch sized {
        case .value(let count): frameSize = count
        case .truncatedInput: throw .truncated
        case .other(let reason): throw .corrupt(reason)
        case .outputTooSmall, .checksumWrong, .windowTooLarge, .outOfMemory: throw .corrupt("ZSTD_findFrameCompressedSize: \(sized)")
        }
        guard frameSize == input.count else {
            let trailing = input.extracting(frameSize...)
            throw ZstdFrameHeader.startsFrame(trailing) ? .multipleFrames : .trailingBytes(count: trailing.count)
        }
        return (frameSize, header.windowSize)
    }
}
