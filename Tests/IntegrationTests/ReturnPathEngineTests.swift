import Foundation
import Synchronization
import Testing
@testable import Migration
import MigrationProtocol
import Transport

/// The return path between the engines, over real sockets: the destination's
/// writer from several threads, the source's reader thread and its mailbox,
/// and what the source makes of each answer.
@Suite struct ReturnPathEngineTests {
    typealias Kit = SwitchoverRetryTests

    /// A connected pair of Unix sockets: (source's end, destination's end).
    static func socketPair() throws -> (any ByteChannel, any ByteChannel, IncomingListener) {
        let path = "/tmp/ferry-rp-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        let accepted = Mutex<(any ByteChannel)?>(nil)
        let thread = Thread { accepted.withLock { $0 = try? listener.accept() } }
        thread.start()
        let source = try Transport.connect(.unix(path: path))
        while accepted.withLock({ $0 }) == nil { usleep(1000) }
        return (source, accepted.withLock { $0 }!, listener)
    }

    /// A channel that records what is written.
    final class RecordingChannel: ByteChannel {
        let written = Mutex<[UInt8]>([])
        func write(_ bytes: [UInt8]) throws(ChannelError) { written.withLock { $0 += bytes } }
        func read(upTo count: Int, into buffer: inout [UInt8], at offset: Int) throws(ChannelError) -> Int { 0 }
        func waitReadable(timeout: Duration) throws(ChannelError) -> Bool { false }
        var hasReturnPath: Bool { true }
        func shutdown() {}
        func close() {}
    }

    @Test("messages arrive in order, page requests go to the hook (or are counted), and the end is said every time")
    func readerDeliversInOrder() throws {
        let (source, destination, listener) = try Self.socketPair()
        defer { listener.close(); source.close(); destination.close() }
        let requests = Mutex<[UInt64]>([])
        let reader = ReturnPathReader(channel: source) { _, offset, _ in requests.withLock { $0.append(offset) } }
        reader.start()
        #expect(reader.next(timeout: .milliseconds(50)) == nil, "nothing sent yet")
        let writer = ReturnPathWriter(channel: destination)
        try writer.send(.pageRequest(block: 0, offset: 8192, length: 4096))
        try writer.send(.switchoverAck)
        try writer.send(.pageRequest(block: 0, offset: 4096, length: 4096))
        try writer.send(.failed("no room"))
        try writer.send(.shut)
        #expect(throws: MigrationError.self) { try writer.send(.loaded) }
        #expect(reader.next(timeout: .seconds(5)) == .message(.switchoverAck))
        #expect(reader.next(timeout: .seconds(5)) == .message(.failed("no room")))
        #expect(reader.next(timeout: .seconds(5)) == .message(.shut))
        #expect(reader.next(timeout: .seconds(5)) == .closed)
        #expect(reader.next(timeout: .seconds(5)) == .closed)
        reader.join()
        #expect(requests.withLock { $0 } == [8192, 4096])

        // Without a hook, requests are counted and ignored; the destination closing is the end.
        let (source2, destination2, listener2) = try Self.socketPair()
        defer { listener2.close(); source2.close() }
        let unhooked = ReturnPathReader(channel: source2)
        unhooked.start()
        try ReturnPathWriter(channel: destination2).send(.pageRequest(block: 1, offset: 0, length: 4096))
        destination2.close()
        #expect(unhooked.next(timeout: .seconds(5)) == .closed)
        unhooked.join()
        #expect(unhooked.ignoredPageRequests == 1)
    }

    @Test("answers nobody takes are bounded: a destination flooding the mailbox fails the return path, with the reason")
    func floodedMailbox() throws {
        let (source, destination, listener) = try Self.socketPair()
        defer { listener.close(); source.close(); destination.close() }
        let reader = ReturnPathReader(channel: source)
        reader.start()
        let writer = ReturnPathWriter(channel: destination)
        for _ in 0...ReturnPathReader.unreadLimit { try? writer.send(.switchoverAck) }
        // None taken until the reader has read them all (or stopped).
        let deadline = ContinuousClock.now + .seconds(10)
        while reader.mailbox.withLock({ $0.last?.ends != true }), ContinuousClock.now < deadline { usleep(1000) }
        for _ in 0..<ReturnPathReader.unreadLimit { #expect(reader.next(timeout: .seconds(5)) == .message(.switchoverAck)) }
        #expect(reader.next(timeout: .seconds(5)) == .failed(.stream(.malformed(
            "the destination sent more than \(ReturnPathReader.unreadLimit) answers the source has not asked for"))))
        reader.join()

        // Bitmaps: two of the largest a message may carry, unread, are one too many.
        let (source2, destination2, listener2) = try Self.socketPair()
        defer { listener2.close(); source2.close(); destination2.close() }
        let flooded = ReturnPathReader(channel: source2)
        flooded.start()
        let big = [UInt64](repeating: 0, count: ReturnMessage.maximumBitmapWords)
        let writer2 = ReturnPathWriter(channel: destination2)
        try writer2.send(.receivedBitmap(block: 0, words: big))
        try? writer2.send(.receivedBitmap(block: 1, words: big))
        while flooded.mailbox.withLock({ $0.last?.ends != true }), ContinuousClock.now < deadline + .seconds(20) { usleep(1000) }
        let first = flooded.next(timeout: .seconds(10))
        #expect(first.map { if case .message(.receivedBitmap(0, let words)) = $0 { words.count } else { -1 } } == big.count)
        #expect(flooded.next(timeout: .seconds(10)) == .failed(.stream(.malformed(
            "the destination sent received bitmaps of more than \(ReturnMessage.maximumBitmapWords) words the source has not asked for"))))
        flooded.join()
    }

    @Test("a reader blocked in read: shutting the channel wakes it, and join returns")
    func shutdownWakesTheReader() throws {
        let (source, destination, listener) = try Self.socketPair()
        defer { listener.close(); destination.close() }
        let reader = ReturnPathReader(channel: source)
        reader.start()
        usleep(50_000)
        let start = ContinuousClock.now
        source.shutdown()
        reader.join()
        source.close()
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(reader.next(timeout: .zero) == .closed)
    }

    @Test("a malformed return stream is a protocol error: a corrupt frame, a forward-stream kind, a frame cut short")
    func malformedReturnStream() throws {
        var encoder = ReturnPathEncoder()
        var corrupt = encoder.encode(.failed("bad"))
        corrupt[corrupt.count - 9] ^= 0x20
        var frames = FrameEncoder()
        let forward = StreamHeader.encode() + frames.frame(.end, payload: EndOfStream(StreamDigest()).encode())
        var cutEncoder = ReturnPathEncoder()
        let cut = Array(cutEncoder.encode(.loaded).dropLast(3))
        let cases: [([UInt8], MigrationError)] = [
            (corrupt, .stream(.checksumMismatch(kind: FrameKind.returnMessage.rawValue))),
            (forward, .stream(.unexpectedFrame("a frame of kind 4 on the return path, which carries only return messages"))),
            (cut, .stream(.truncated("the stream ended after \(StreamHeader.byteCount + FrameHeader.byteCount + 7) bytes, 5 of the 8 bytes of the checksum of a frame of kind 16"))),
        ]
        for (bytes, expected) in cases {
            let (source, destination, listener) = try Self.socketPair()
            let reader = ReturnPathReader(channel: source)
            reader.start()
            try destination.write(bytes)
            destination.close()
            #expect(reader.next(timeout: .seconds(5)) == .failed(expected))
            reader.join()
            source.close()
            listener.close()
        }
    }

    @Test("the destination's writer from several threads: every frame whole, numbered in order, one header")
    func writerFromSeveralThreads() throws {
        let channel = RecordingChannel()
        let writer = ReturnPathWriter(channel: channel)
        let done = DispatchGroup()
        for thread in 0..<4 {
            done.enter()
            Thread {
                for i in 0..<100 {
                    try? writer.send(.pageRequest(block: UInt16(thread), offset: UInt64(i) * 4096, length: 4096))
                }
                done.leave()
            }.start()
        }
        done.wait()
        try writer.send(.shut)
        var decoder = ReturnPathDecoder()
        decoder.feed(channel.written.withLock { $0 })
        var perThread = [[UInt64]](repeating: [], count: 4)
        while case .message(let message) = try decoder.next() {
            if case .pageRequest(let block, let offset, _) = message { perThread[Int(block)].append(offset / 4096) }
        }
        #expect(decoder.shut)
        #expect(perThread.allSatisfy { $0 == Array(0..<100) })
    }

    @Test("the forward stream's destination refuses a return-path frame")
    func destinationRefusesReturnFrame() throws {
        let target = try Kit.block(filled: false)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [target]), vcpuCount: 1)
        var frames = FrameEncoder()
        let bytes = StreamHeader.encode() + frames.frame(.configuration, payload: configuration.encode())
            + frames.frame(.returnMessage, payload: ReturnMessage.loaded.encode()) + frames.end()
        let destination = MigrationDestination(
            channel: FrameReaderTests.ChunkedChannel(bytes, chunk: 1 << 20), configuration: configuration,
            ram: RAMMigration(blocks: [target], tracker: nil, destinationStartsZero: true), devices: [], onStatus: { _ in })
        #expect(throws: MigrationError.stream(.unexpectedFrame("a return-path message on the forward stream"))) {
            try destination.run()
        }
    }

    /// A destination that reads the forward stream up to `until` frames (all if nil), then writes `answer` and closes.
    static func scriptedDestination(_ listener: IncomingListener, until: Int?, answer: @escaping @Sendable (any ByteChannel) -> Void) {
        Thread {
            guard let channel = try? listener.accept() else { return }
            var reader = FrameReader(channel: channel)
            var payload: [UInt8] = []
            _ = try? reader.readStreamHeader()
            var count = 0
            var tail: [UInt8] = []
            while count != until, let header = try? reader.next(into: &payload) {
                count += 1
                if header.kind == .end { break }
                if reader.pendingTail > 0 { _ = try? reader.readTail(into: &tail) }
            }
            answer(channel)
            channel.close()
        }.start()
    }

    static func runSource(_ path: String, vm: Kit.RecordingVM) throws -> PrecopySource {
        let source = try Kit.block(filled: true)
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let engine = PrecopySource(
            .init(channel: try Transport.connect(.unix(path: path)), configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: Kit.OneShotDirtyLog(pages: 1024)),
                  devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], vm: vm),
            parameters: PrecopyEngineTests.fast, capabilities: MigrationCapabilities(), onStatus: { _ in })
        engine.run()
        return engine
    }

    @Test("a destination that refuses early: its reason is the source's error, and the guest never stopped")
    func earlyRefusal() throws {
        let path = "/tmp/ferry-rp-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.scriptedDestination(listener, until: 1) { channel in
            let writer = ReturnPathWriter(channel: channel)
            try? writer.send(.failed("configuration mismatch: not today"))
            try? writer.send(.shut)
        }
        let vm = Kit.RecordingVM()
        let engine = try Self.runSource(path, vm: vm)
        #expect(engine.info.status == .failed)
        #expect(engine.info.errorDescription == "the destination failed: configuration mismatch: not today", "\(engine.info.errorDescription ?? "")")
        #expect(!vm.events.withLock { $0 }.contains("hold"))
    }

    @Test("after the end, a corrupt answer is no answer: the source stays paused, with the protocol error")
    func corruptAnswerHolds() throws {
        let path = "/tmp/ferry-rp-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        Self.scriptedDestination(listener, until: nil) { channel in
            var encoder = ReturnPathEncoder()
            var bytes = encoder.encode(.loaded)
            bytes[bytes.count - 1] ^= 1
            try? channel.write(bytes)
        }
        let vm = Kit.RecordingVM()
        let engine = try Self.runSource(path, vm: vm)
        #expect(engine.info.status == .failed)
        #expect(engine.info.errorDescription?.contains("checksum mismatch in a frame of kind 16") == true, "\(engine.info.errorDescription ?? "")")
        #expect(vm.events.withLock { $0 } == ["stop", "hold"])
        #expect(engine.info.destinationMayRun)
    }
}
