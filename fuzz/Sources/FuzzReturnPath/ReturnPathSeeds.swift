import FuzzSupport
import MigrationProtocol

/// The `returnpath` seed corpus, built with the encoder the destination uses
/// (`ReturnPathEncoder`), so that after a format change
/// `FuzzReturnPath --make-seeds fuzz/corpus/returnpath` regenerates valid seeds.
enum ReturnPathSeeds {
    static func write(to directory: String) { SeedFiles.write(all(), to: directory) }

    /// Each seed by file name.
    static func all() -> [(String, [UInt8])] {
        let every: [ReturnMessage] = [
            .switchoverAck,
            .pageRequest(block: 0, offset: 0x20_0000, length: 4096),
            .pageRequest(block: 1, offset: 0, length: 2 << 20),
            .receivedBitmap(block: 0, words: [0, .max, 0x5555_5555_5555_5555]),
            .failed("configuration mismatch: vcpus 1 here, 2 on the source"),
            .loaded,
            .shut,
        ]
        let all = stream(every)
        return [
            ("loaded", stream([.loaded, .shut])),
            ("failed", stream([.failed("unexpected frame: the stream ended without section 'serial'"), .shut])),
            ("every-message", all),
            ("requests", stream((0..<8).map { .pageRequest(block: UInt16($0 % 2), offset: UInt64($0) << 12, length: 4096) })),
            ("no-shut", stream([.switchoverAck, .loaded])),
            ("truncated", Array(all.prefix(all.count * 2 / 3))),
        ]
    }

    static func stream(_ messages: [ReturnMessage]) -> [UInt8] {
        var encoder = ReturnPathEncoder()
        return messages.flatMap { encoder.encode($0) }
    }
}
