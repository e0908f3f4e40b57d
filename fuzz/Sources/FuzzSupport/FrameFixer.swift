import MigrationProtocol

/// What the stream-shaped fuzz targets (`stream`, `returnpath`) do to an input
/// before running it, so mutations reach the decoders behind the frame checks
/// instead of stopping at them (the checks themselves are fuzzed by inputs
/// whose frames are cut short).
public enum FrameFixer {
    /// Rewrites every complete frame after the stream header (frame := 16-byte
    /// header with the sequence at 4..<8 and the payload length at 8..<16,
    /// payload, 8-byte checksum): its sequence number, its checksum, and for a
    /// 16-byte `end` the count and digest of the frames before it.  Returns
    /// `false` for an input not worth running: one with a frame whose declared
    /// payload is more than `truncatedLengthLimit` bytes longer than what is left
    /// of the input (it would only measure a reader waiting for bytes that never come).
    public static func fix(_ bytes: inout [UInt8], truncatedLengthLimit: UInt64) -> Bool {
        var offset = StreamHeader.byteCount
        var digest = StreamDigest()
        while offset + FrameHeader.byteCount <= bytes.count {
            var length: UInt64 = 0
            for i in (0..<8).reversed() { length = length << 8 | UInt64(bytes[offset + 8 + i]) }
            let payloadStart = offset + FrameHeader.byteCount
            let available = UInt64(bytes.count - payloadStart)
            guard available >= UInt64(FrameHeader.trailerByteCount),
                  length <= available - UInt64(FrameHeader.trailerByteCount) else {
                return length <= available + truncatedLengthLimit
            }
            let sequence = UInt32(truncatingIfNeeded: digest.frames)
            for i in 0..<4 { bytes[offset + 4 + i] = UInt8(truncatingIfNeeded: sequence >> (8 * UInt32(i))) }
            let payloadEnd = payloadStart + Int(length)
            let kind = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
            if kind == FrameKind.end.rawValue && length == UInt64(EndOfStream.byteCount) {
                bytes.replaceSubrange(payloadStart..<payloadEnd, with: EndOfStream(digest).encode())
            }
            let sum = FrameChecksum.of(bytes[payloadStart..<payloadEnd])
            for i in 0..<8 { bytes[payloadEnd + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
            if let frameKind = FrameKind(rawValue: kind) { digest.add(kind: frameKind, payloadLength: Int(length), checksum: sum) }
            offset = payloadEnd + FrameHeader.trailerByteCount
        }
        return true
    }
}
