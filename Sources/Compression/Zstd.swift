import CZstd

// The module's only caller of libzstd.  The contexts below own zstd's state
// and free it in `deinit`; every call returns zstd's `size_t` result, which
// `ZstdResult` turns into a count or a typed failure.

/// What a zstd call returned: a count, or one of the failures Ferry tells apart.
enum ZstdResult {
    case value(Int)
    case truncatedInput                 // ZSTD_error_srcSize_wrong
    case outputTooSmall                 // ZSTD_error_dstSize_tooSmall
    case checksumWrong                  // ZSTD_error_checksum_wrong
    case windowTooLarge                 // ZSTD_error_frameParameter_windowTooLarge
    case outOfMemory                    // ZSTD_error_memory_allocation
    case other(String)                  // zstd's own text

    init(_ code: Int) {
        guard ZSTD_isError(code) != 0 else {
            self = .value(code)
            return
        }
        self = switch ZSTD_getErrorCode(code) {
        case ZSTD_error_srcSize_wrong: .truncatedInput
        case ZSTD_error_dstSize_tooSmall: .outputTooSmall
        case ZSTD_error_checksum_wrong: .checksumWrong
        case ZSTD_error_frameParameter_windowTooLarge: .windowTooLarge
        case ZSTD_error_memory_allocation: .outOfMemory
        // SAFETY: zstd returns a static, NUL-terminated string for every code.
        default: .other(unsafe String(cString: ZSTD_getErrorName(code)))
        }
    }

    /// The count, or the failure as a compression-side library error naming `operation`.
    func get(_ operation: String) throws(CompressionError) -> Int {
        if case .value(let value) = self { return value }
        throw failure(operation) ?? .library(operation: operation, reason: "unknown error")
    }

    /// The failure as a compression-side library error naming `operation`; nil for a value.
    func failure(_ operation: String) -> CompressionError? {
        switch self {
        case .value: nil
        case .outOfMemory: .outOfMemory(operation: operation)
        case .truncatedInput: .library(operation: operation, reason: "Src size is incorrect")
        case .outputTooSmall: .library(operation: operation, reason: "Destination buffer is too small")
        case .checksumWrong: .library(operation: operation, reason: "Restored data doesn't match checksum")
        case .windowTooLarge: .library(operation: operation, reason: "Frame requires too much memory for decoding")
        case .other(let reason): .library(operation: operation, reason: reason)
        }
    }
}

/// Upper bound of a frame's size for `byteCount` input bytes (`ZSTD_compressBound`).
func zstdCompressBound(_ byteCount: Int) -> Int { ZSTD_compressBound(byteCount) }

/// The highest window log zstd accepts on this platform, and the lowest.
let zstdWindowLogs: ClosedRange<Int> = 10...(MemoryLayout<Int>.size == 8 ? 31 : 30)

/// Owns a `ZSTD_CCtx`: parameters set once, reused frame after frame.
@safe struct CompressionContext: ~Copyable {
    private let context: OpaquePointer

    /// Creates a context with `level` and a content checksum in every frame.
    init(level: Int) throws(CompressionError) {
        // SAFETY: creates a context this value owns; freed below on failure, else in deinit.
        guard let context = unsafe ZSTD_createCCtx() else { throw .outOfMemory(operation: "ZSTD_createCCtx") }
        let parameters = [("ZSTD_c_compressionLevel", ZSTD_c_compressionLevel, Int32(level)),
                          ("ZSTD_c_checksumFlag", ZSTD_c_checksumFlag, 1),
                          ("ZSTD_c_contentSizeFlag", ZSTD_c_contentSizeFlag, 1)]
        for (name, parameter, value) in parameters {
            // SAFETY: the context was created above and is live.
            let result = ZstdResult(unsafe ZSTD_CCtx_setParameter(context, parameter, value))
            if let error = result.failure("ZSTD_CCtx_setParameter(\(name))") {
                // SAFETY: the context is not stored anywhere yet; freed once.
                unsafe ZSTD_freeCCtx(context)
                throw error
            }
        }
        unsafe self.context = context
    }

    deinit {
        // SAFETY: this value owns the context and is its last user.
        unsafe ZSTD_freeCCtx(context)
    }

    /// Starts a new frame of exactly `byteCount` bytes (written into its header).
    borrowing func begin(byteCount: Int) throws(CompressionError) {
        // SAFETY: the context is live while `self` is.
        _ = try ZstdResult(unsafe ZSTD_CCtx_reset(context, ZSTD_reset_session_only)).get("ZSTD_CCtx_reset")
        // SAFETY: as above.
        _ = try ZstdResult(unsafe ZSTD_CCtx_setPledgedSrcSize(context, UInt64(byteCount))).get("ZSTD_CCtx_setPledgedSrcSize")
    }

    /// One `ZSTD_compressStream2` step: consumes input from `inputPosition`,
    /// writes output from `outputPosition`, and advances both.  With `end`, the
    /// result is what remains to flush (0 once the frame is complete).
    borrowing func compress(_ input: UnsafeRawBufferPointer, inputPosition: inout Int,
                            into output: UnsafeMutableRawBufferPointer, outputPosition: inout Int, end: Bool) -> ZstdResult {
        var inBuffer = unsafe ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: inputPosition)
        var outBuffer = unsafe ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: outputPosition)
        // SAFETY: both buffers describe memory the caller keeps alive for this call,
        // and zstd stays within their sizes.
        let code = unsafe ZSTD_compressStream2(context, &outBuffer, &inBuffer, end ? ZSTD_e_end : ZSTD_e_continue)
        inputPosition = unsafe inBuffer.pos
        outputPosition = unsafe outBuffer.pos
        return ZstdResult(code)
    }
}

/// Owns a `ZSTD_DCtx`, reused frame after frame.
@safe struct DecompressionContext: ~Copyable {
    private let context: OpaquePointer

    /// Creates a context that refuses windows above `1 << maxWindowLog` (`ZSTD_d_windowLogMax`).
    init(maxWindowLog: Int) throws(CompressionError) {
        // SAFETY: creates a context this value owns; freed below on failure, else in deinit.
        guard let context = unsafe ZSTD_createDCtx() else { throw .outOfMemory(operation: "ZSTD_createDCtx") }
        // SAFETY: the context was created above and is live.
        let result = ZstdResult(unsafe ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Int32(maxWindowLog)))
        if let error = result.failure("ZSTD_DCtx_setParameter(ZSTD_d_windowLogMax)") {
            // SAFETY: the context is not stored anywhere yet; freed once.
            unsafe ZSTD_freeDCtx(context)
            throw error
        }
        unsafe self.context = context
    }

    deinit {
        // SAFETY: this value owns the context and is its last user.
        unsafe ZSTD_freeDCtx(context)
    }

    /// The size of the first frame in `input` (`ZSTD_findFrameCompressedSize`).
    borrowing func frameSize(_ input: UnsafeRawBufferPointer) -> ZstdResult {
        // SAFETY: zstd reads only within `input`, which the caller keeps alive.
        ZstdResult(unsafe ZSTD_findFrameCompressedSize(input.baseAddress, input.count))
    }

    /// Decompresses the single frame `input` into `output` in one pass
    /// (`ZSTD_decompressDCtx`): zstd writes only within `output` and needs no
    /// window buffer, since the whole output is in place.
    borrowing func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> ZstdResult {
        // SAFETY: zstd reads only within `input` and writes only within `output`,
        // both kept alive by the caller for this call.
        ZstdResult(unsafe ZSTD_decompressDCtx(context, output.baseAddress, output.count, input.baseAddress, input.count))
    }
}
