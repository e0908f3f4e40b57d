/// Compresses guest pages into zstd frames, one frame per batch, reusing one
/// zstd context and one output buffer.
///
/// Corresponds to QEMU's `multifd-compression: zstd`.  Make one per channel
/// thread (it is not `Sendable`), then for each batch:
///
/// ```swift
/// try compressor.begin(totalBytes: pages.count * 4096)
/// for page in pages { try compressor.append(page) }      // a Span<UInt8> per 4 KiB page
/// try compressor.finish()
/// try compressor.withOutput { frame in try channel.write(frame) }
/// ```
///
/// Each frame states its decompressed size in its header (the pledged
/// `totalBytes`) and ends with a content checksum (`ZSTD_c_checksumFlag`), so
/// the receiver's ``ZstdDecompressor`` can refuse a frame of the wrong size
/// before decoding it, and detects a corrupt one that still decodes.  The
/// checksum costs 4 bytes a frame and an XXH64 pass over the input, small
/// beside compressing it.
///
/// The output buffer grows to `ZSTD_compressBound(totalBytes)` once and is
/// reused; `append` copies nothing itself (zstd buffers up to one 128 KiB block).
public final class ZstdCompressor {
    /// QEMU's `multifd-zstd-level` range.  Level 0 is zstd's default level (3),
    /// as it is in QEMU, which passes the level to zstd unchanged.
    public static let levels: ClosedRange<Int> = 0...20
    /// QEMU's default `multifd-zstd-level`: fast, and most of the gain on guest RAM.
    public static let defaultLevel = 1

    /// The compression level, within ``levels``.
    public let level: Int

    private enum State {
        case idle
        case compressing(pledged: Int, appended: Int, written: Int)
        case finished(byteCount: Int)
    }

    private let context: CompressionContext
    private var buffer: [UInt8] = []
    private var state = State.idle

    /// Creates a compressor at `level` (`ZSTD_c_compressionLevel`).
    ///
    /// - Throws: ``CompressionError/invalidLevel(_:supported:)`` outside 0...20;
    ///   ``CompressionError/outOfMemory(operation:)`` if zstd cannot allocate its context.
    public init(level: Int = ZstdCompressor.defaultLevel) throws(CompressionError) {
        guard Self.levels.contains(level) else { throw .invalidLevel(level, supported: Self.levels) }
        self.level = level
        context = try CompressionContext(level: level)
    }

    /// Starts a frame that will hold exactly `totalBytes` bytes; abandons any
    /// frame in progress.  The size goes into the frame header
    /// (`ZSTD_CCtx_setPledgedSrcSize`).
    public func begin(totalBytes: Int) throws(CompressionError) {
        precondition(totalBytes >= 0, "a zstd frame cannot hold \(totalBytes) bytes")
        state = .idle
        try context.begin(byteCount: totalBytes)
        let bound = zstdCompressBound(totalBytes)
        if buffer.count < bound { buffer = [UInt8](repeating: 0, count: bound) }   // grows once, then reused
        state = .compressing(pledged: totalBytes, appended: 0, written: 0)
    }

    /// Appends `bytes` (typically one 4 KiB guest page) to the frame.
    ///
    /// - Precondition: a frame was begun and not yet finished.
    /// - Throws: ``CompressionError/pledgedSizeMismatch(pledged:appended:)`` if
    ///   this would exceed `totalBytes`; the frame is then abandoned.
    public func append(_ bytes: Span<UInt8>) throws(CompressionError) {
        guard case .compressing(let pledged, let appended, var written) = state else {
            preconditionFailure("ZstdCompressor.append(_:) outside begin(totalBytes:) ... finish()")
        }
        state = .idle   // until this append succeeds
        guard bytes.count <= pledged - appended else {
            throw .pledgedSizeMismatch(pledged: pledged, appended: appended + bytes.count)
        }
        var consumed = 0
        while consumed < bytes.count {
            if written == buffer.count { growBuffer() }
            let result = unsafe bytes.withUnsafeBytes { input in
                unsafe buffer.withUnsafeMutableBytes { output in
                    unsafe context.compress(input, inputPosition: &consumed, into: output, outputPosition: &written, end: false)
                }
            }
            _ = try result.get("ZSTD_compressStream2(ZSTD_e_continue)")
        }
        state = .compressing(pledged: pledged, appended: appended + bytes.count, written: written)
    }

    /// Completes the frame and returns its size in bytes; read it with ``withOutput(_:)``.
    ///
    /// - Precondition: a frame was begun and not yet finished.
    /// - Throws: ``CompressionError/pledgedSizeMismatch(pledged:appended:)`` if
    ///   fewer than `totalBytes` were appended; the frame is then abandoned.
    @discardableResult
    public func finish() throws(CompressionError) -> Int {
        guard case .compressing(let pledged, let appended, var written) = state else {
            preconditionFailure("ZstdCompressor.finish() without begin(totalBytes:)")
        }
        state = .idle
        guard appended == pledged else { throw .pledgedSizeMismatch(pledged: pledged, appended: appended) }
        var consumed = 0
        while true {
            if written == buffer.count { growBuffer() }
            let result = unsafe buffer.withUnsafeMutableBytes { output in
                unsafe context.compress(UnsafeRawBufferPointer(start: nil, count: 0), inputPosition: &consumed,
                                        into: output, outputPosition: &written, end: true)
            }
            if try result.get("ZSTD_compressStream2(ZSTD_e_end)") == 0 { break }
        }
        state = .finished(byteCount: written)
        return written
    }

    /// Calls `body` with the last finished frame.  The span is valid only inside
    /// `body`; the next ``begin(totalBytes:)`` reuses its memory.
    ///
    /// - Precondition: ``finish()`` succeeded since the last ``begin(totalBytes:)``.
    public func withOutput<Result, Failure: Error>(_ body: (Span<UInt8>) throws(Failure) -> Result) throws(Failure) -> Result {
        guard case .finished(let byteCount) = state else {
            preconditionFailure("ZstdCompressor.withOutput(_:) without a finished frame")
        }
        let output = buffer    // the same storage, held for the span's lifetime
        return try body(output.span.extracting(0..<byteCount))
    }

    /// Compresses `bytes` as one frame: ``begin(totalBytes:)``, ``append(_:)``,
    /// ``finish()``.  Returns the frame's size; read it with ``withOutput(_:)``.
    @discardableResult
    public func compress(_ bytes: Span<UInt8>) throws(CompressionError) -> Int {
        try begin(totalBytes: bytes.count)
        try append(bytes)
        return try finish()
    }

    /// Only when zstd's output outruns `ZSTD_compressBound`, which it should not.
    private func growBuffer() {
        buffer.append(contentsOf: repeatElement(0, count: max(buffer.count, 4096)))
    }
}
