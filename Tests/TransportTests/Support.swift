import Foundation
import Glibc
import GuestMemory
import Migration
import Synchronization
import Testing
@testable import Transport

/// Helpers shared by the transport tests: patterned guest memory, socket pairs,
/// and a reader on its own thread.
enum Kit {
    /// 8 KiB of varied bytes that test pages are cut from (built once: debug test code is slow per byte).
    static let source: [UInt8] = (0..<8192).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ ($0 >> 5)) }

    /// Test page `index`: a window of `source` that moves with the index and seed,
    /// stamped with both, so no two pages of a test are alike.
    static func page(_ index: Int, seed: Int = 0) -> [UInt8] {
        let start = (index &* 97 &+ seed &* 13) & 4095
        var bytes = Array(source[start..<start + 4096])
        bytes[0] = UInt8(truncatingIfNeeded: index)
        bytes[1] = UInt8(truncatingIfNeeded: index >> 8)
        bytes[2] = UInt8(truncatingIfNeeded: seed)
        return bytes
    }

    /// Test pages 0..<count, one after another.
    static func stream(pages count: Int, seed: Int = 0) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count * 4096)
        for index in 0..<count { bytes += page(index, seed: seed) }
        return bytes
    }

    /// An anonymous mapping of `pages` 4 KiB pages, page `p` holding `page(p, seed:)`.
    static func filledMapping(pages: Int, seed: Int = 0) throws -> HostMapping {
        let mapping = try HostMapping(byteCount: UInt64(pages * 4096), backend: .anon)
        for index in 0..<pages { mapping.storePage(page(index, seed: seed), range: 0..<4096, at: index * 4096) }
        return mapping
    }

    /// The 4 KiB page at `offset` of `mapping`, copied out.
    static func page(of mapping: HostMapping, at offset: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        mapping.appendPage(at: offset, to: &bytes)
        return bytes
    }

    /// Where `a` and `b` first differ (a count mismatch counts); nil if equal.  Compared
    /// this way, a failure reports one index instead of printing megabytes.
    static func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        if a == b { return nil }
        return zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? (a.count == b.count ? nil : min(a.count, b.count))
    }

    /// A connected pair of Unix stream sockets, as channels.
    static func socketPair() throws -> (DescriptorChannel, DescriptorChannel) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw ChannelError.system("socketpair", errno: errno) }
        return (DescriptorChannel(adopting: fds[0], returnPath: true), DescriptorChannel(adopting: fds[1], returnPath: true))
    }

    /// A connected TCP loopback pair: (the connecting side, the accepted side).
    static func tcpPair() throws -> (DescriptorChannel, DescriptorChannel) {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let client = try Transport.connect(listener.address)
        return (client, try listener.accept(timeout: .seconds(10)))
    }
}

/// Reads `count` bytes from a channel on its own thread; `wait` returns them (or the error).
final class ReaderThread: Sendable {
    let result = Mutex<Result<[UInt8], ChannelError>?>(nil)

    init(_ channel: any ByteChannel, count: Int) {
        let thread = Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: count)
            do throws(ChannelError) {
                try channel.readExactly(count, into: &buffer, at: 0)
                result.withLock { $0 = .success(buffer) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
        }
        thread.start()
    }

    func wait() throws -> [UInt8] {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let done = result.withLock({ $0 }) { return try done.get() }
            usleep(1000)
        }
        throw ChannelError.timedOut("reader thread")
    }
}

/// Runs `body` on its own thread (a writer feeding the reader under test).
final class WorkerThread: Sendable {
    let finished = Mutex<ChannelError??>(nil)

    init(_ body: @escaping @Sendable () throws -> Void) {
        let thread = Thread { [self] in
            do {
                try body()
                finished.withLock { $0 = .some(nil) }
            } catch {
                finished.withLock { $0 = .some(error as? ChannelError ?? .system("\(error)", errno: 0)) }
            }
        }
        thread.start()
    }

    /// The worker's error, if it threw.
    func wait() -> ChannelError? {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let done = finished.withLock({ $0 }) { return done }
            usleep(1000)
        }
        return .timedOut("worker thread")
    }
}
