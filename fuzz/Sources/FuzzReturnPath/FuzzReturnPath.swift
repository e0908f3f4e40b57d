import FuzzSupport
import Glibc
import Migration
import MigrationProtocol
import Synchronization

/// libFuzzer target `returnpath`: the fuzz input is what a destination sends
/// back on the return path.  Two readers take it: the pure, incremental
/// `ReturnPathDecoder` and the engine's `ReturnPathReader` thread (with its
/// blocking `FrameReader`), and they must agree on every message and on how
/// the stream ends.  A thrown `ProtocolError` is the expected outcome for most
/// inputs; a disagreement, a trap, a crash or a hang is a finding.
///
/// As for `stream`, every complete frame's sequence number and checksum are
/// rewritten first (`FrameFixer`), so mutations reach `ReturnMessage`'s
/// field checks.  The reader keeps `applied` reports aside (its `appliedEpoch`)
/// and refuses an epoch that does not rise; the target models both.

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    let arguments = CommandLine.arguments
    if let flag = arguments.firstIndex(of: "--make-seeds") {
        guard flag + 1 < arguments.count else { fatalError("usage: FuzzReturnPath --make-seeds DIR") }
        ReturnPathSeeds.write(to: arguments[flag + 1])
        exit(0)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data = unsafe data, size > 0 else { return 0 }
    // SAFETY: libFuzzer hands us `size` readable bytes at `data` for the duration of this call.
    var bytes = unsafe Array(UnsafeBufferPointer(start: data, count: size))
    guard FrameFixer.fix(&bytes, truncatedLengthLimit: 1 << 20) else { return 0 }
    ReturnPathTarget.check(bytes)
    return 0
}

enum ReturnPathTarget {
    /// `FERRY_FUZZ_EXPLAIN=1 FuzzReturnPath FILE...` prints how each input ends.
    static let explain = unsafe getenv("FERRY_FUZZ_EXPLAIN") != nil

    static func check(_ bytes: [UInt8]) {
        // The pure decoder, up to `shut` (where the engine's reader stops reading).
        var decoder = ReturnPathDecoder()
        decoder.feed(bytes)
        var decoded: [ReturnMessage] = []
        var refusal: ProtocolError?
        do {
            while case .message(let message) = try decoder.next() {
                decoded.append(message)
                if message == .shut { break }
            }
        } catch { refusal = error }
        // `applied` is a progress report the reader keeps aside (never queued), and it
        // refuses one whose epoch does not rise: model that on what the decoder read.
        var lastApplied: UInt64 = 0
        for (index, message) in decoded.enumerated() {
            guard case .applied(let epoch) = message else { continue }
            guard epoch > lastApplied else {
                decoded.removeSubrange(index...)
                refusal = .malformed("applied epoch \(epoch) went backwards")
                break
            }
            lastApplied = epoch
        }

        // The engine's reader thread over the same bytes, then the channel's end.
        let requests = RequestLog()
        let reader = ReturnPathReader(channel: InputChannel(bytes)) { block, offset, length in
            requests.append(.pageRequest(block: block, offset: offset, length: length))
        }
        reader.start()
        reader.join()
        var delivered: [ReturnMessage] = []
        var ending = ReturnPathReader.Event.closed
        while let event = reader.next(timeout: .zero) {
            guard case .message(let message) = event else { ending = event; break }
            delivered.append(message)
        }

        func isRequest(_ m: ReturnMessage) -> Bool { if case .pageRequest = m { true } else { false } }
        func isApplied(_ m: ReturnMessage) -> Bool { if case .applied = m { true } else { false } }
        guard requests.all == decoded.filter(isRequest),
            delivered == decoded.filter({ !isRequest($0) && !isApplied($0) }),
            reader.appliedEpoch == lastApplied
        else {
            fatalError("the readers disagree: decoder \(decoded), reader \(requests.all) + \(delivered), applied \(reader.appliedEpoch)")
        }
        let expected: ReturnPathReader.Event
        if let refusal {
            expected = .failed(.stream(refusal))
        } else if decoded.last == .shut || decoder.bufferedByteCount == 0 {
            expected = .closed
        } else {
            // Cut inside the header or a frame: the reader says how far it got; the decoder waits for more.
            guard case .failed(.stream(.truncated)) = ending else {
                fatalError("a cut stream ended the reader with \(ending)")
            }
            expected = ending
        }
        guard ending == expected else { fatalError("the reader ended with \(ending), the decoder with \(expected)") }
        if explain { print("\(decoded.count) messages, then \(ending)") }
    }
}

/// The page requests the reader's hook was handed, in order.
final class RequestLog: Sendable {
    private let log = Mutex<[ReturnMessage]>([])
    func append(_ message: ReturnMessage) { log.withLock { $0.append(message) } }
    var all: [ReturnMessage] { log.withLock { $0 } }
}
