import Foundation
import Synchronization
import Testing
import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// Multifd through the real engine over real Unix sockets, without KVM: every
/// page arrives on 1 to 8 channels, with and without zstd; the destination's
/// barrier keeps an old copy of a page from landing after a newer one; hostile
/// handshakes are refused; a channel that dies fails the migration and the
/// source runs on.
@Suite(.serialized) struct MultifdEngineTests {
    typealias Kit = SwitchoverRetryTests

    static let blockBytes = 16 << 20

    /// A 16 MiB block: every third page random, every third a pattern, the rest zero
    /// (`sparse`: the same over one page in 16, so one in 24 written).
    static func block(filled: Bool, sparse: Bool = false) throws -> RAMBlock {
        let mapping = try HostMapping(byteCount: UInt64(blockBytes), backend: .anon)
        if filled {
            var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
            for page in stride(from: 0, to: blockBytes, by: sparse ? 16 * 4096 : 4096) where (page / 4096) % 3 != 2 {
                let bytes: [UInt8] = (page / 4096) % 3 == 0
                    ? (0..<4096).map { _ in seed = seed &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: seed >> 33) }
                    : (0..<4096).map { UInt8(truncatingIfNeeded: $0 / 64 + page >> 12) }
                mapping.storePage(bytes, range: 0..<4096, at: page)
            }
        }
        return RAMBlock(name: "pc.ram", mapping: mapping, placements: [])
    }

    static func socketPath() -> String { "/tmp/ferry-multifd-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock" }

    /// The destination's acceptor, as a test sees it: every connection after
    /// the main one goes through `wrap` first.
    struct WrappingAcceptor: ChannelAcceptor {
        let listener: IncomingListener
        let wrap: @Sendable (any ByteChannel) -> any ByteChannel
        func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel { wrap(try listener.accept(timeout: timeout)) }
        func close() { listener.close() }
    }

    struct Outcome {
        let info: MigrationInfo
        let events: [String]
        let destination: Result<Void, MigrationError>?
        let source: RAMBlock, target: RAMBlock
    }

    /// Migrates a filled block into an empty one with `capabilities` and `parameters`.
    static func run(channels: Int, compression: MultifdCompression = .none, detection: ZeroPageDetection = .multifd,
                    zeroCopy: Bool = false, uri: MigrationURI? = nil, maxBandwidth: UInt64 = 1 << 40, sparse: Bool = false,
                    during: @escaping @Sendable (PrecopySource) -> Void = { _ in },
                    wrap: @escaping @Sendable (any ByteChannel) -> any ByteChannel = { $0 }) throws -> Outcome {
        let source = try block(filled: true, sparse: sparse), target = try block(filled: false)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let uri = uri ?? .unix(path: socketPath())
        let listener = try Transport.listen(uri)
        defer { listener.close() }
        let result = Mutex<Result<Void, MigrationError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let loaded = Kit.StopSizedDevice(vm: nil, largeStops: 0)
        let destination = Thread {
            defer { done.signal() }
            do throws(MigrationError) {
                let main: any ByteChannel
                do throws(ChannelError) { main = try listener.accept(timeout: .seconds(30)) } catch { throw .channel(error) }
                let engine = MigrationDestination(
                    channel: main, acceptor: WrappingAcceptor(listener: listener, wrap: wrap), configuration: configuration,
                    ram: RAMMigration(blocks: [target], tracker: nil, destinationStartsZero: true),
                    devices: [loaded], onStatus: { _ in })
                try engine.run()
                result.withLock { $0 = .success(()) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
        }
        destination.start()
        var parameters = MigrationParameters()
        parameters.maxBandwidth = maxBandwidth
        parameters.multifdChannels = UInt8(channels)
        parameters.multifdCompression = compression
        parameters.zeroPageDetection = detection
        var capabilities = MigrationCapabilities()
        capabilities.multifd = true
        capabilities.zeroCopySend = zeroCopy
        let address = listener.address
        let vm = Kit.RecordingVM()
        let engine = PrecopySource(
            .init(opener: try URIChannelOpener(address), configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: Kit.OneShotDirtyLog(pages: blockBytes / 4096)),
                  devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], vm: vm),
            parameters: parameters, capabilities: capabilities, onStatus: { _ in })
        let watcher = Thread { during(engine) }
        watcher.start()
        engine.run()
        _ = done.wait(timeout: .now() + 30)
        return Outcome(info: engine.info, events: vm.events.withLock { $0 }, destination: result.withLock { $0 }, source: source, target: target)
    }

    @Test("every page arrives on 1, 2, 4 and 8 channels, with and without zstd",
          arguments: [1, 2, 4, 8], [MultifdCompression.none, .zstd])
    func everyPageArrives(channels: Int, compression: MultifdCompression) throws {
        let outcome = try Self.run(channels: channels, compression: compression)
        #expect(outcome.info.status == .completed, "\(outcome.info.errorDescription ?? "")")
        if case .failure(let error)? = outcome.destination { Issue.record("destination: \(error)") }
        #expect(Kit.sameBytes(outcome.source, outcome.target), "every page arrived intact")
        let multifd = outcome.info.channels.filter { $0.role == .multifd }
        #expect(multifd.count == channels)
        #expect(multifd.allSatisfy { $0.normalPages > 0 }, "every channel carried pages: \(multifd)")
        #expect(multifd.reduce(0) { $0 + $1.normalPages } == UInt64(Self.blockBytes / 4096 * 2 / 3 + 1))
        #expect(outcome.info.multifdBytes == multifd.reduce(0) { $0 + $1.bytes })
        let pageBytes = UInt64(Self.blockBytes / 4096 * 2 / 3 + 1) * 4096
        if compression == .zstd {
            #expect(outcome.info.multifdBytes < pageBytes * 3 / 4, "zstd shrank the pattern pages: \(outcome.info.multifdBytes)")
        } else {
            #expect(outcome.info.multifdBytes > pageBytes, "\(outcome.info.multifdBytes)")
        }
        #expect(outcome.info.channels.first?.role == .main && (outcome.info.channels.first?.bytes ?? 0) < 1 << 20,
                "no pages on the main channel")
    }

    @Test("zero pages: found on the channels (multifd), by the picker (legacy), or not looked for (none)",
          arguments: [ZeroPageDetection.multifd, .legacy, .none])
    func zeroPageDetection(detection: ZeroPageDetection) throws {
        let outcome = try Self.run(channels: 2, detection: detection)
        #expect(outcome.info.status == .completed, "\(outcome.info.errorDescription ?? "")")
        #expect(Kit.sameBytes(outcome.source, outcome.target))
        let pages = UInt64(Self.blockBytes / 4096)
        // The block was never written where zero: its chunks are resident, so only detection finds them.
        if detection == .none {
            #expect(outcome.info.ram.normalPages == pages && outcome.info.ram.zeroPages == 0)
        } else {
            #expect(outcome.info.ram.zeroPages >= pages / 3 - 1 && outcome.info.ram.normalPages < pages, "\(outcome.info.ram)")
        }
    }

    /// A channel that fails its reads once it has passed `bytes` (the connection dies mid-way).
    final class DyingChannel: ByteChannel {
        let inner: any ByteChannel
        let limit: Int
        let seen = Mutex(0)
        init(_ inner: any ByteChannel, dyingAfter limit: Int) { (self.inner, self.limit) = (inner, limit) }
        func write(_ bytes: [UInt8]) throws(ChannelError) { try inner.write(bytes) }
        func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int {
            try check()
            let n = try inner.read(upTo: count, into: &buffer, at: offset)
            seen.withLock { $0 += n }
            return n
        }
        func read(into list: borrowing ScatterList) throws(ChannelError) {
            try check()
            try inner.read(into: list)
            seen.withLock { $0 += list.byteCount }
        }
        func check() throws(ChannelError) {
            if seen.withLock({ $0 }) > limit {
                inner.shutdown()
                throw .system("read from the migration channel", errno: 104)
            }
        }
        func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { try inner.waitReadable(timeout: timeout) }
        var hasReturnPath: Bool { inner.hasReturnPath }
        func shutdown() { inner.shutdown() }
        func close() { inner.close() }
    }

    @Test("a multifd connection that dies mid-way fails the migration, the source runs on intact, and a retry succeeds")
    func deadChannel() throws {
        let count = Mutex(0)
        let failed = try Self.run(channels: 4, wrap: { channel in
            let index = count.withLock { n -> Int in defer { n += 1 }; return n }
            return index == 2 ? DyingChannel(channel, dyingAfter: 1 << 20) : channel
        })
        #expect(failed.info.status == .failed)
        // The destination's reason when its answer comes in time, else the source's own broken channel.
        // The dying channel shuts its connection before its error reaches the destination's receiver;
        // in that window the source may see the broken pipe, fail and close its main channel, and the
        // destination then reports the main channel's early end (seen once in CI).
        let reason = failed.info.errorDescription ?? ""
        #expect(reason.contains("Connection reset by peer") || reason.contains("Broken pipe") || reason.contains("stream truncated"),
                "\(reason)")
        guard case .failure? = failed.destination else { Issue.record("the destination loaded a stream with a dead channel"); return }
        #expect(!failed.events.contains("hold"), "before the switchover the source is never held: \(failed.events)")
        #expect(failed.events.allSatisfy { $0 != "completed" })
        let retry = try Self.run(channels: 4)
        #expect(retry.info.status == .completed, "\(retry.info.errorDescription ?? "")")
        #expect(Kit.sameBytes(retry.source, retry.target))
    }

    @Test("migrate_cancel mid-way: every channel stops, the source runs on (never stopped), the destination refuses the rest")
    func cancelMidway() throws {
        let outcome = try Self.run(channels: 4, maxBandwidth: 16 << 20, during: { engine in
            usleep(300_000)
            engine.cancel()
        })
        #expect(outcome.info.status == .cancelled, "\(outcome.info.errorDescription ?? "")")
        #expect(outcome.events.isEmpty, "the guest was never stopped: \(outcome.events)")
        #expect(outcome.info.multifdBytes > 0 && outcome.info.multifdBytes < UInt64(Self.blockBytes), "\(outcome.info.multifdBytes)")
        guard case .failure? = outcome.destination else { Issue.record("the destination loaded a cancelled stream"); return }
    }

    @Test("max-bandwidth holds for the sum of the channels")
    func sharedRateLimit() throws {
        let outcome = try Self.run(channels: 4, maxBandwidth: 32 << 20)
        #expect(outcome.info.status == .completed, "\(outcome.info.errorDescription ?? "")")
        // What went out while the guest ran (the switchover is not rate-limited) took at
        // least its bytes over 32 MiB/s, whatever the channel count.
        let live = outcome.info.transferredBytes - outcome.info.downtimeBytes
        let seconds = Double(outcome.info.totalTime - (outcome.info.downtime ?? 0)) / 1000
        #expect(live > 2 << 20, "\(live) bytes before the switchover")
        #expect(seconds >= Double(live) / Double(32 << 20) * 0.8, "\(seconds) s for \(live) bytes")
    }

    /// Seen failing before a wait for budget looked again when a job's pages turned
    /// out zero: every job held a window's budget (its whole pages promised) and the
    /// picker slept to the window's end, a job a window, 1.6 s for this block.
    @Test("max-bandwidth counts the bytes sent: a block mostly zero pages goes at the limit on what it sends, not on its size")
    func rateLimitCountsBytesNotPages() throws {
        let limit: UInt64 = 2 << 20
        let outcome = try Self.run(channels: 2, maxBandwidth: limit, sparse: true)
        #expect(outcome.info.status == .completed, "\(outcome.info.errorDescription ?? "")")
        if case .failure(let error)? = outcome.destination { Issue.record("destination: \(error)") }
        #expect(Kit.sameBytes(outcome.source, outcome.target), "every page arrived intact")
        // About 0.7 MiB of pages (one in 24 written; the zero ones a few bytes each) at
        // 2 MiB/s: a third of a second, not the 16 MiB block's eight seconds, nor a
        // 100 ms window for each of its 16 jobs.
        let live = outcome.info.transferredBytes - outcome.info.downtimeBytes
        let seconds = Double(outcome.info.totalTime - (outcome.info.downtime ?? 0)) / 1000
        #expect(live < 1 << 20, "\(live) bytes before the switchover")
        #expect(seconds < 0.8, "\(seconds) s for \(live) bytes at 2 MiB/s")
        // The limit holds all the same (a window's budget goes at once, at the start).
        let window = Double(limit) / 10
        #expect(seconds >= (Double(live) - 2 * window) / Double(limit) * 0.8, "\(seconds) s for \(live) bytes: over the limit")
    }

    @Test("zero-copy-send: every page arrives over TCP (loopback copies, and says so); a Unix socket refuses it")
    func zeroCopy() throws {
        let outcome = try Self.run(channels: 2, zeroCopy: true, uri: .tcp(host: "127.0.0.1", port: 0))
        #expect(outcome.info.status == .completed, "\(outcome.info.errorDescription ?? "")")
        #expect(Kit.sameBytes(outcome.source, outcome.target))
        // The kernel reports its loopback copies: proof the pages went with MSG_ZEROCOPY.
        #expect(outcome.info.ram.dirtySyncMissedZeroCopy >= 1)
        let unix = try Self.run(channels: 2, zeroCopy: true)
        #expect(unix.info.status == .failed)
        #expect(unix.info.errorDescription?.contains("Requested Zero Copy feature is not available") == true, "\(unix.info.errorDescription ?? "")")
    }
}
