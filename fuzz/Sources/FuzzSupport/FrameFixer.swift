import MigrationProtocol

/// What the stream-shaped fuzz targets (`stream`, `returnpath`) do to an input
/// before running it, so mutations reach the decoders behind the frame checks
/// instead of stopping at them (the checks themselves are fuzzed by inputs
/// whose frames are cut short).
public enum FrameFixer {
    /// Rewrites every complete frame of one channel's stream after its stream
    /// header (frame := 24-byte header with the kind at 0..<2, the sequence at
    /// 4..<8, the payload length at 8..<16 and the tail length at 16..<24,
    /// payload, 8-byte checksum, tail): in an uncompressed `pages` frame, each
    /// data record's page checksum (from its page in the tail); then its
    /// sequence number, its checksum, and for a 16-byte `end` the count and
    /// digest of the frames before it.  Returns `false` for an input not worth
    /// running: one with a frame whose declared payload and tail are more than
    /// `truncatedLengthLimit` bytes longer than what is left of the input (it
    /// would only measure a reader waiting for bytes that never come).
    public static func fix(_ bytes: inout [UInt8], truncatedLengthLimit: UInt64) -> Bool {
        fix(&bytes[...], truncatedLengthLimit: truncatedLengthLimit)
    }

    /// The same for one channel's stream inside a larger input.
    public static func fix(_ bytes: inout ArraySlice<UInt8>, truncatedLengthLimit: UInt64) -> Bool {
        var offset = bytes.startIndex + StreamHeader.byteCount
        var digest = StreamDigest()
        while offset + FrameHeader.byteCount <= bytes.endIndex {
            let length = u64(bytes, at: offset + 8)
            let tailLength = u64(bytes, at: offset + 16)
            let payloadStart = offset + FrameHeader.byteCount
            let available = UInt64(bytes.endIndex - payloadStart)
            let trailer = UInt64(FrameHeader.trailerByteCount)
            guard available >= trailer, length <= available - trailer, tailLength <= available - trailer - length else {
                let (claimed, overflow) = length.addingReportingOverflow(tailLength)
                return !overflow && claimed <= available + truncatedLengthLimit
            }
            let sequence = UInt32(truncatingIfNeeded: digest.frames)
            for i in 0..<4 { bytes[offset + 4 + i] = UInt8(truncatingIfNeeded: sequence >> (8 * UInt32(i))) }
            let payloadEnd = payloadStart + Int(length)
            let tailStart = payloadEnd + FrameHeader.trailerByteCount
            let kind = UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8
            if kind == FrameKind.end.rawValue && length == UInt64(EndOfStream.byteCount) {
                bytes.replaceSubrange(payloadStart..<payloadEnd, with: EndOfStream(digest).encode())
            }
            if kind == FrameKind.pages.rawValue {
                fixPageChecksums(&bytes, index: payloadStart..<payloadEnd, tail: tailStart..<tailStart + Int(tailLength))
            }
            let sum = FrameChecksum.of(bytes[payloadStart..<payloadEnd])
            for i in 0..<8 { bytes[payloadEnd + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
            if let frameKind = FrameKind(rawValue: kind) {
                digest.add(kind: frameKind, payloadLength: Int(length), tailLength: Int(tailLength), checksum: sum)
            }
            offset = tailStart + Int(tailLength)
        }
        return true
    }

    /// In an uncompressed page index (`PageIndex`'s layout), sets each data
    /// record's checksum to that of its 4 KiB page in the tail, as far as the tail goes.
    static func fixPageChecksums(_ bytes: inout ArraySlice<UInt8>, index: Range<Int>, tail: Range<Int>) {
        guard index.count >= PageFrame.headerByteCount, bytes[index.lowerBound + 4] & UInt8(PageFrame.compressedFlag) == 0 else { return }
        let pageSize = 4096
        var page = tail.lowerBound
        var record = index.lowerBound + PageFrame.headerByteCount
        while record + PageFrame.recordByteCount <= index.upperBound && page + pageSize <= tail.upperBound {
            if bytes[record] == PageRecordKind.data.rawValue {
                let sum = FrameChecksum.of(bytes[page..<page + pageSize])
                for i in 0..<8 { bytes[record + 16 + i] = UInt8(truncatingIfNeeded: sum >> (8 * UInt64(i))) }
                page += pageSize
            }
            record += PageFrame.recordByteCount
        }
    }

    static func u64(_ bytes: ArraySlice<UInt8>, at offset: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in (0..<8).reversed() { value = value << 8 | UInt64(bytes[offset + i]) }
        return value
    }
}
