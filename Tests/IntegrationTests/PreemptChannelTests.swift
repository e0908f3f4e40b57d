import Foundation
import Synchronization
import Testing
import GuestMemory
import Migration
import MigrationProtocol
import Transport
@testable import VMM

/// A postcopy destination's preempt channel, driven by hand-made streams with
/// the real userfaultfd placement: pages asked for arrive there and land; page
/// data that is corrupt, outside the discard set, or early is refused with its reason.
@Suite(.serialized) struct PreemptChannelTests {
    static let id = (0..<16).map { UInt8($0 + 7) }

    final class Destination: Sendable {
        let listener: IncomingListener
        let target: RAMBlock
        let result = Mutex<Result<Void, MigrationError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let engine = Mutex<MigrationDestination?>(nil)

        init(backend: MemoryBackend = .anon) throws {
            listener = try Transport.listen(.unix(path: MultifdEngineTests.socketPath()))
            target = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: backend == .hugetlb ? 4 << 20 : 1 << 20, backend: backend),
                              placements: [])
            let blocks = [target]
            let placement: @Sendable () throws(MigrationError) -> any PagePlacement = { () throws(MigrationError) in
                try UserfaultPagePlacement(blocks: blocks, leavesZeroUnits: true)
            }
            let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: blocks), vcpuCount: 1)
            let thread = Thread { [self] in
                defer { done.signal() }
                do throws(MigrationError) {
                    let main: any ByteChannel
                    do throws(ChannelError) { main = try listener.accept(timeout: .seconds(10)) } catch { throw .channel(error) }
                    let destination = MigrationDestination(channel: main, acceptor: listener, configuration: configuration,
                                                           ram: RAMMigration(blocks: blocks, tracker: nil, destinationStartsZero: true),
                                                           devices: [], channelTimeout: .seconds(5), placement: placement, onStatus: { _ in })
                    engine.withLock { $0 = destination }
                    try destination.run()
                    result.withLock { $0 = .success(()) }
                } catch {
                    result.withLock { $0 = .failure(error) }
                }
            }
            thread.start()
        }

        /// The main channel up to the plan (with preempt; with `requestsBack`, page requests on its way back),
        /// and the preempt channel's header.
        func open(main encoder: inout FrameEncoder, requestsBack: Bool = true) throws -> (main: DescriptorChannel, preempt: DescriptorChannel) {
            let main = try Transport.connect(listener.address)
            let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [target]), vcpuCount: 1)
            try main.write(StreamHeader.encode(ChannelIdentity(role: .main, migrationID: PreemptChannelTests.id))
                           + encoder.frame(.configuration, payload: configuration.encode())
                           + encoder.frame(.channels, payload: ChannelPlan(multifd: 0, preempt: true, preemptRequests: requestsBack).encode()))
            let preempt = try Transport.connect(listener.address)
            try preempt.write(StreamHeader.encode(ChannelIdentity(role: .postcopyPreempt, migrationID: PreemptChannelTests.id)))
            return (main, preempt)
        }

        func outcome() -> Result<Void, MigrationError>? {
            _ = done.wait(timeout: .now() + 20)
            listener.close()
            return result.withLock { $0 }
        }

        /// After the switch a refused stream pauses the load (the guest would run on): why,
        /// once it has; then the load is abandoned, as when the machine quits.
        func pauseReason() -> String? {
            let deadline = ContinuousClock.now + .seconds(20)
            var reason: String?
            while ContinuousClock.now < deadline, result.withLock({ $0 }) == nil {
                if let engine = engine.withLock({ $0 }), engine.status == .postcopyPaused {
                    reason = engine.pauseReason
                    break
                }
                usleep(10_000)
            }
            engine.withLock { $0 }?.abort()
            _ = outcome()
            return reason
        }

        func page(_ offset: Int) -> [UInt8] {
            target.mapping.withSpan(at: offset, count: 4096) { span in (0..<4096).map { span[$0] } }
        }
    }

    /// A thread reading the page at `offset` of the destination's RAM (a fault while it is missing).
    final class Touch: Sendable {
        let page = Mutex<[UInt8]?>(nil)

        init(_ destination: Destination, offset: Int) {
            Thread { [self] in
                let bytes = destination.page(offset)
                page.withLock { $0 = bytes }
            }.start()
        }

        /// What the thread read, once it could (nil if it still waits after 5 s).
        func read() -> [UInt8]? {
            let deadline = ContinuousClock.now + .seconds(5)
            while page.withLock({ $0 }) == nil, ContinuousClock.now < deadline { usleep(1000) }
            return page.withLock { $0 }
        }
    }

    /// The switch with pages 0-3 of the 1 MiB block discarded.
    static func switchFrame(_ encoder: inout FrameEncoder) -> [UInt8] {
        encoder.frame(.postcopy, payload: PostcopyDiscard(words: [[0b1111, 0, 0, 0]]).encode())
    }

    static func pages(_ pages: [(offset: UInt64, fill: UInt8)], corrupt: Bool = false) -> (payload: [UInt8], tail: [UInt8]) {
        var batch = PageBatchWriter()
        for page in pages { batch.append(block: 0, offset: page.offset, page: ArraySlice(repeating: page.fill, count: 4096)) }
        var tail = batch.tail
        if corrupt { tail[100] ^= 1 }
        return (batch.payload(), tail)
    }

    @Test("pages asked for arrive on the preempt channel, the rest on the main one; every page lands")
    func pagesLandFromBothChannels() throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder(), urgentFrames = FrameEncoder()
        let (main, preempt) = try destination.open(main: &mainFrames)
        try main.write(Self.switchFrame(&mainFrames))
        usleep(100_000)     // as from a source: asked for only after the switch
        let urgent = Self.pages([(4096, 0x21), (8192, 0x22)])
        try preempt.write(urgentFrames.frame(.pages, payload: urgent.payload, tail: urgent.tail) + urgentFrames.end())
        let background = Self.pages([(0, 0x20), (12288, 0x23)])
        try main.write(mainFrames.frame(.pages, payload: background.payload, tail: background.tail) + mainFrames.end())
        let outcome = destination.outcome()
        guard case .success? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
        for (index, fill) in [0x20, 0x21, 0x22, 0x23].enumerated() {
            #expect(destination.page(index * 4096) == [UInt8](repeating: UInt8(fill), count: 4096), "page \(index)")
        }
        main.close()
        preempt.close()
    }

    @Test("a page asked for may come on both channels: the second copy is dropped, not placed over the first; a third is refused")
    func aRequestedPageOnBothChannels() throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder(), urgentFrames = FrameEncoder()
        let (main, preempt) = try destination.open(main: &mainFrames)
        try main.write(Self.switchFrame(&mainFrames))
        usleep(100_000)
        let touch = Touch(destination, offset: 8192)
        #expect(try Self.messages(on: preempt, count: 1, within: .seconds(10)) == [.pageRequest(block: 0, offset: 8192, length: 4096)])
        // The source's resend on the preempt channel lands first; the background's copy
        // (made different here, to show it is not placed) follows on the main one.
        let urgent = Self.pages([(8192, 0x22)])
        try preempt.write(urgentFrames.frame(.pages, payload: urgent.payload, tail: urgent.tail))
        #expect(touch.read() == [UInt8](repeating: 0x22, count: 4096))
        let background = Self.pages([(0, 0x20), (4096, 0x21), (8192, 0x99), (12288, 0x23)])
        try main.write(mainFrames.frame(.pages, payload: background.payload, tail: background.tail))
        usleep(200_000)
        // Refused, the load would pause with page 3 missing, and reading it would wait for good.
        let paused = destination.engine.withLock { $0 }?.status == .postcopyPaused
        try #require(!paused, "the second copy was refused: \(destination.engine.withLock { $0 }?.pauseReason ?? "")")
        #expect(destination.page(8192) == [UInt8](repeating: 0x22, count: 4096), "the second copy was dropped")
        #expect(destination.page(12288) == [UInt8](repeating: 0x23, count: 4096), "the pages after it in its frame landed")
        // A third copy is refused.
        let third = Self.pages([(8192, 0x22)])
        try preempt.write(urgentFrames.frame(.pages, payload: third.payload, tail: third.tail))
        let reason = destination.pauseReason()
        #expect(reason?.contains("page at offset 8192 of RAM block 'pc.ram' arrived in postcopy, but it was not in the discard set or arrived already") == true,
                "\(reason ?? "not paused")")
        main.close()
        preempt.close()
    }

    /// The return-path messages that arrive on `channel` within `within` (up to the first `count`).
    static func messages(on channel: DescriptorChannel, count: Int, within: Duration) throws -> [ReturnMessage] {
        var decoder = ReturnPathDecoder()
        var messages: [ReturnMessage] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + within
        while messages.count < count, ContinuousClock.now < deadline {
            guard try channel.waitReadable(timeout: min(.milliseconds(20), deadline - .now)) else { continue }
            let read = try channel.read(upTo: buffer.count, into: &buffer, at: 0)
            guard read > 0 else { break }
            decoder.feed(buffer[0..<read])
            while case .message(let message) = try decoder.next() { messages.append(message) }
        }
        return messages
    }

    @Test("with a preempt channel the destination asks for pages on that channel's way back when the plan says the source reads them there, else on the main return path",
          arguments: [true, false])
    func requestsGoBackOnThePreemptChannel(requestsBack: Bool) throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder(), urgentFrames = FrameEncoder()
        let (main, preempt) = try destination.open(main: &mainFrames, requestsBack: requestsBack)
        let (asked, other) = requestsBack ? (preempt, main) : (main, preempt)
        try main.write(Self.switchFrame(&mainFrames))
        let deadline = ContinuousClock.now + .seconds(10)
        while destination.engine.withLock({ $0 })?.status != .postcopyActive, ContinuousClock.now < deadline { usleep(1000) }
        // A thread touches page 2, not yet here: its fault becomes a request.
        let touch = Touch(destination, offset: 8192)
        #expect(try Self.messages(on: asked, count: 1, within: .seconds(10)) == [.pageRequest(block: 0, offset: 8192, length: 4096)])
        #expect(try Self.messages(on: other, count: 1, within: .milliseconds(200)).isEmpty, "nothing asked on the other way back")
        let urgent = Self.pages([(8192, 0x22)])
        try preempt.write(urgentFrames.frame(.pages, payload: urgent.payload, tail: urgent.tail) + urgentFrames.end())
        let background = Self.pages([(0, 0x20), (4096, 0x21), (12288, 0x23)])
        try main.write(mainFrames.frame(.pages, payload: background.payload, tail: background.tail) + mainFrames.end())
        let outcome = destination.outcome()
        guard case .success? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
        #expect(touch.read() == [UInt8](repeating: 0x22, count: 4096), "the faulting thread read the page sent")
        main.close()
        preempt.close()
    }

    struct Hostile: Sendable, CustomTestStringConvertible {
        let name: String
        let beforeSwitch: Bool
        let pages: [UInt64]
        let corrupt: Bool
        let reason: String
        var testDescription: String { name }
    }

    @Test("hostile page data on the preempt channel is refused with its reason (after the switch, the load pauses with it)",
          arguments: [
            Hostile(name: "a corrupt page", beforeSwitch: false, pages: [4096], corrupt: true,
                    reason: "the page at offset 4096 of RAM block 'pc.ram' arrived corrupt in postcopy"),
            Hostile(name: "a page outside the discard set", beforeSwitch: false, pages: [40960], corrupt: false,
                    reason: "page at offset 40960 of RAM block 'pc.ram' arrived in postcopy, but it was not in the discard set or arrived already"),
            Hostile(name: "a page twice", beforeSwitch: false, pages: [4096, 4096], corrupt: false,
                    reason: "page at offset 4096 of RAM block 'pc.ram' arrived in postcopy, but it was not in the discard set or arrived already"),
            Hostile(name: "pages before the switch", beforeSwitch: true, pages: [4096], corrupt: false,
                    reason: "pages on the postcopy preempt channel before the switch to postcopy"),
          ])
    func hostilePreemptData(_ test: Hostile) throws {
        let destination = try Destination()
        var mainFrames = FrameEncoder(), urgentFrames = FrameEncoder()
        let (main, preempt) = try destination.open(main: &mainFrames)
        if !test.beforeSwitch {
            try main.write(Self.switchFrame(&mainFrames))
            usleep(100_000)     // the switch is made before the preempt channel's pages come
        }
        var frames: [UInt8] = []
        for offset in test.pages {
            let batch = Self.pages([(offset, 0x5a)], corrupt: test.corrupt)
            frames += urgentFrames.frame(.pages, payload: batch.payload, tail: batch.tail)
        }
        try preempt.write(frames)
        if test.beforeSwitch {
            let outcome = destination.outcome()
            guard case .failure(let error)? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
            #expect(error.description.contains(test.reason), "\(error)")
        } else {
            // After the switch the load pauses with the reason (a recovery could resend the pages).
            let reason = destination.pauseReason()
            #expect(reason?.contains(test.reason) == true, "\(reason ?? "not paused: \(String(describing: destination.result.withLock { $0 }))")")
        }
        main.close()
        preempt.close()
    }

    @Test("a huge page whose pages come on both channels is refused: the load pauses with the reason")
    func hugePageOnTwoChannels() async throws {
        try await MultifdKernelTests.withHugePages(2) {
            let destination = try Destination(backend: .hugetlb)
            var mainFrames = FrameEncoder(), urgentFrames = FrameEncoder()
            let (main, preempt) = try destination.open(main: &mainFrames)
            // Huge page 0 (pages 0-511 of the 4 MiB block) discarded.
            try main.write(mainFrames.frame(.postcopy, payload: PostcopyDiscard(words: [[UInt64](repeating: .max, count: 8) + [UInt64](repeating: 0, count: 8)]).encode()))
            usleep(100_000)
            let first = Self.pages((0..<4).map { (UInt64($0) * 4096, UInt8(0x30)) })
            try main.write(mainFrames.frame(.pages, payload: first.payload, tail: first.tail))
            usleep(100_000)
            let other = Self.pages([(4 * 4096, 0x31)])
            try preempt.write(urgentFrames.frame(.pages, payload: other.payload, tail: other.tail))
            let reason = destination.pauseReason()
            #expect(reason?.contains("the huge page at offset 0 of RAM block 'pc.ram' arrived on two channels") == true, "\(reason ?? "not paused")")
            main.close()
            preempt.close()
        }
    }
}
