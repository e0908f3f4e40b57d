import Foundation
import Synchronization
import Testing
import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// The destination's side of the channel layer, driven by hand-made streams:
/// the sync barrier, and every hostile handshake refused with its reason.
@Suite(.serialized) struct MultifdHandshakeTests {
    static let id = (0..<16).map { UInt8($0 + 1) }

    final class Destination: Sendable {
        let listener: IncomingListener
        let target: RAMBlock
        let result = Mutex<Result<Void, MigrationError>?>(nil)
        let done = DispatchSemaphore(value: 0)

        init(timeout: Duration = .seconds(5)) throws {
            listener = try Transport.listen(.unix(path: MultifdEngineTests.socketPath()))
            let mapping = try HostMapping(byteCount: 1 << 20, backend: .anon)
            target = RAMBlock(name: "pc.ram", mapping: mapping, placements: [])
            let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [target]), vcpuCount: 1)
            let thread = Thread { [self] in
                defer { done.signal() }
                do throws(MigrationError) {
                    let main: any ByteChannel
                    do throws(ChannelError) { main = try listener.accept(timeout: .seconds(10)) } catch { throw .channel(error) }
                    try MigrationDestination(channel: main, acceptor: listener, configuration: configuration,
                                             ram: RAMMigration(blocks: [target], tracker: nil, destinationStartsZero: true),
                                             devices: [], channelTimeout: timeout, onStatus: { _ in }).run()
                    result.withLock { $0 = .success(()) }
                } catch {
                    result.withLock { $0 = .failure(error) }
                }
            }
            thread.start()
        }

        var configuration: MigrationConfiguration { MigrationConfiguration(blocks: RAMMigration.layout(of: [target]), vcpuCount: 1) }

        func connect() throws -> DescriptorChannel { try Transport.connect(listener.address) }

        /// Opens the main channel: header, configuration, a plan of `channels` multifd channels.
        func openMain(channels: Int, encoder: inout FrameEncoder) throws -> DescriptorChannel {
            let main = try connect()
            try main.write(StreamHeader.encode(ChannelIdentity(role: .main, migrationID: MultifdHandshakeTests.id))
                           + encoder.frame(.configuration, payload: configuration.encode())
                           + encoder.frame(.channels, payload: ChannelPlan(multifd: UInt16(channels)).encode()))
            return main
        }

        func outcome() -> Result<Void, MigrationError>? {
            _ = done.wait(timeout: .now() + 20)
            listener.close()
            return result.withLock { $0 }
        }

        func page(_ offset: Int) -> [UInt8] {
            target.mapping.withSpan(at: offset, count: 4096) { span in (0..<4096).map { span[$0] } }
        }
    }

    static func pages(_ offset: UInt64, fill: UInt8) -> (payload: [UInt8], tail: [UInt8]) {
        var batch = PageBatchWriter()
        batch.append(block: 0, offset: offset, page: ArraySlice(repeating: fill, count: 4096))
        return (batch.payload(), batch.tail)
    }

    @Test("the sync barrier: a page's old copy (channel 0, before the sync) never lands after its new copy (channel 1, after it)")
    func barrierOrdersEpochs() throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder()
        let main = try destination.openMain(channels: 2, encoder: &mainFrames)
        // Channel 1 arrives first with the new copy, after its sync.
        let fast = try destination.connect()
        var fastFrames = FrameEncoder()
        let new = Self.pages(8192, fill: 0x22)
        try fast.write(StreamHeader.encode(ChannelIdentity(role: .multifd, index: 1, migrationID: Self.id))
                       + fastFrames.frame(.sync, payload: SyncMarker.encode(epoch: 1))
                       + fastFrames.frame(.pages, payload: new.payload, tail: new.tail) + fastFrames.end())
        // Channel 0's old copy, sent before the sync, arrives late.
        let slow = try destination.connect()
        try slow.write(StreamHeader.encode(ChannelIdentity(role: .multifd, index: 0, migrationID: Self.id)))
        usleep(300_000)
        var slowFrames = FrameEncoder()
        let old = Self.pages(8192, fill: 0x11)
        try slow.write(slowFrames.frame(.pages, payload: old.payload, tail: old.tail)
                       + slowFrames.frame(.sync, payload: SyncMarker.encode(epoch: 1)) + slowFrames.end())
        try main.write(mainFrames.end())
        let outcome = destination.outcome()
        guard case .success? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
        let page = destination.page(8192)
        #expect(page.first == 0x22 && Set(page).count == 1, "the newer copy won, not 0x\(String(page.first ?? 0, radix: 16))")
        for channel in [main, fast, slow] { channel.close() }
    }

    @Test("a channel that ends while another waits at a sync fails the load instead of hanging it (reproduced through FuzzStream)")
    func channelEndsBeforeSync() throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder()
        let main = try destination.openMain(channels: 2, encoder: &mainFrames)
        var waitingFrames = FrameEncoder(), endingFrames = FrameEncoder()
        let waiting = try destination.connect()
        try waiting.write(StreamHeader.encode(ChannelIdentity(role: .multifd, index: 0, migrationID: Self.id))
                          + waitingFrames.frame(.sync, payload: SyncMarker.encode(epoch: 1)) + waitingFrames.end())
        let ending = try destination.connect()
        try ending.write(StreamHeader.encode(ChannelIdentity(role: .multifd, index: 1, migrationID: Self.id)) + endingFrames.end())
        // The load may have failed and closed the main channel already (Broken pipe, seen on CI).
        try? main.write(mainFrames.end())
        let outcome = destination.outcome()
        guard case .failure(let error)? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
        #expect(error.description.contains("ended"), "\(error)")
        for channel in [main, waiting, ending] { channel.close() }
    }

    @Test("a page whose bytes do not match its checksum is kept as suspect: a later good copy clears it, none fails the load")
    func suspectPages() throws {
        for resent in [true, false] {
            let destination = try Destination()
            var frames = FrameEncoder()
            let main = try destination.openMain(channels: 0, encoder: &frames)
            // The guest wrote the page while it was in flight: the bytes sent are not the ones summed.
            let sent = Self.pages(4096, fill: 0x33)
            var changed = sent.tail
            changed[100] = 0x34
            var bytes = frames.frame(.pages, payload: sent.payload, tail: changed)
            if resent {
                let again = Self.pages(4096, fill: 0x35)       // the dirty log sends it again
                bytes += frames.frame(.pages, payload: again.payload, tail: again.tail)
            }
            try main.write(bytes + frames.end())
            let outcome = destination.outcome()
            main.close()
            if resent {
                guard case .success? = outcome else { Issue.record("a page resent intact still failed: \(String(describing: outcome))"); continue }
                #expect(destination.page(4096).first == 0x35)
            } else {
                guard case .failure(let error)? = outcome else { Issue.record("a corrupt page was accepted"); continue }
                #expect(error.description.contains("1 page(s) arrived corrupt and were not sent again (the first: offset 4096 of RAM block 'pc.ram')"),
                        "\(error)")
            }
        }
    }

    /// Opens a plan of two channels, then one connection with `header`; returns the destination's error.
    func refusal(_ header: [UInt8], first: [UInt8]? = nil) throws -> String {
        let destination = try Destination()
        var frames = FrameEncoder()
        let main = try destination.openMain(channels: 2, encoder: &frames)
        var extra: [DescriptorChannel] = []
        if let first {
            let channel = try destination.connect()
            try channel.write(first)
            extra.append(channel)
        }
        let hostile = try destination.connect()
        try? hostile.write(header)
        let outcome = destination.outcome()
        for channel in [main, hostile] + extra { channel.close() }
        guard case .failure(let error)? = outcome else { return "accepted" }
        return error.description
    }

    @Test("hostile handshakes: unknown role, another migration's id, an index past the plan, an index twice, a second main channel")
    func hostileHandshakes() throws {
        var unknownRole = StreamHeader.encode(ChannelIdentity(role: .multifd, index: 0, migrationID: Self.id))
        unknownRole[16] = 7
        #expect(try refusal(unknownRole).contains("channel role 7"))
        let otherID = StreamHeader.encode(ChannelIdentity(role: .multifd, index: 0, migrationID: [UInt8](repeating: 9, count: 16)))
        #expect(try refusal(otherID).contains("multifd channel 0 belongs to another migration"))
        let pastPlan = StreamHeader.encode(ChannelIdentity(role: .multifd, index: 5, migrationID: Self.id))
        #expect(try refusal(pastPlan).contains("multifd channel index 5, but the source announced 2 channels"))
        let zero = StreamHeader.encode(ChannelIdentity(role: .multifd, index: 0, migrationID: Self.id))
        #expect(try refusal(zero, first: zero).contains("multifd channel 0 arrived twice"))
        let secondMain = StreamHeader.encode(ChannelIdentity(role: .main, migrationID: Self.id))
        #expect(try refusal(secondMain).contains("a connection opened as the main channel where multifd channels were due"))
        #expect(try refusal(Array("GET / HTTP/1.1\r\n\r\n".utf8) + [UInt8](repeating: 0, count: 40)).contains("bad magic"))
    }

    @Test("a multifd channel that never arrives fails the load in time, naming it")
    func missingChannel() throws {
        let destination = try Destination(timeout: .milliseconds(300))
        var frames = FrameEncoder()
        let main = try destination.openMain(channels: 2, encoder: &frames)
        let one = try destination.connect()
        try one.write(StreamHeader.encode(ChannelIdentity(role: .multifd, index: 1, migrationID: Self.id)))
        let started = ContinuousClock.now
        let outcome = destination.outcome()
        #expect(ContinuousClock.now - started < .seconds(5))
        guard case .failure(let error)? = outcome else { Issue.record("accepted"); return }
        #expect(error.description.contains("multifd channel(s) 0 did not arrive within 0.3 seconds"), "\(error)")
        main.close()
        one.close()
    }
}
