import Foundation
import Synchronization
import Testing
import GuestMemory
@testable import Migration
import MigrationProtocol
import Transport

/// A paused postcopy destination, driven by hand-made streams with the real
/// userfaultfd placement: a reconnection that names another migration, opens
/// with another frame, or announces other channels is refused and the load
/// stays paused, saying why; a good one gets the received bitmap (every page
/// but those still to come), and the load completes on it.
@Suite(.serialized) struct PostcopyRecoveryEngineTests {
    typealias Kit = PreemptChannelTests

    /// A new connection to `address` that opens as `identity` and sends `first` (kind, payload).
    static func reconnect(_ address: MigrationURI, _ encoder: inout FrameEncoder, identity: ChannelIdentity,
                          first: (FrameKind, [UInt8])) throws -> DescriptorChannel {
        let channel = try Transport.connect(address)
        try channel.write(StreamHeader.encode(identity) + encoder.frame(first.0, payload: first.1))
        return channel
    }

    /// Waits until the load is paused with a reason containing `text`.
    static func waitPaused(_ engine: MigrationDestination, containing text: String) -> String? {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if engine.status == .postcopyPaused, let reason = engine.pauseReason, text.isEmpty || reason.contains(text) { return reason }
            usleep(10_000)
        }
        return engine.pauseReason
    }

    @Test("a broken postcopy pauses; bad reconnections are refused and it stays paused; a good one gets the received bitmap and completes")
    func recoverByHand() throws {
        let destination = try Kit.Destination()
        var mainFrames = FrameEncoder()
        let (main, preempt) = try destination.open(main: &mainFrames)
        try main.write(Kit.switchFrame(&mainFrames))        // pages 0-3 discarded
        let first = Kit.pages([(0, 0x40)])
        try main.write(mainFrames.frame(.pages, payload: first.payload, tail: first.tail))
        usleep(200_000)
        // The network fails: both channels go.
        main.close()
        preempt.close()
        let engine = try #require(destination.engine.withLock { $0 })
        let broken = Self.waitPaused(engine, containing: "")
        #expect(engine.status == .postcopyPaused, "\(broken ?? "")")
        #expect(throws: MigrationError.invalidState("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")) {
            try engine.pause()
        }

        let plan = ChannelPlan(multifd: 0, preempt: true, preemptRequests: true).encode()
        let cases: [(identity: ChannelIdentity, first: (FrameKind, [UInt8]), reason: String)] = [
            (ChannelIdentity(role: .main, migrationID: [UInt8](repeating: 9, count: 16)), (.resume, plan),
             "the recovered connection belongs to another migration"),
            (ChannelIdentity(role: .postcopyPreempt, migrationID: Kit.id), (.resume, plan), "not the main channel"),
            (ChannelIdentity(role: .main, migrationID: Kit.id), (.sync, SyncMarker.encode(epoch: 1)),
             "a recovered connection must open with a resume frame, not a frame of kind 7"),
            (ChannelIdentity(role: .main, migrationID: Kit.id), (.resume, ChannelPlan(multifd: 0).encode()),
             "announces 0 multifd channel(s) and no preempt channel; the migration had a preempt channel with page requests on its way back"),
            (ChannelIdentity(role: .main, migrationID: Kit.id), (.resume, ChannelPlan(multifd: 0, preempt: true).encode()),
             "announces 0 multifd channel(s) and a preempt channel; the migration had a preempt channel with page requests on its way back"),
        ]
        for bad in cases {
            let listener = try Transport.listen(.unix(path: MultifdEngineTests.socketPath()))
            try engine.recover(from: listener)
            var frames = FrameEncoder()
            let channel = try Self.reconnect(listener.address, &frames, identity: bad.identity, first: bad.first)
            let reason = Self.waitPaused(engine, containing: bad.reason)
            #expect(reason?.contains(bad.reason) == true, "\(reason ?? "not paused")")
            channel.close()
        }

        // A second migrate-recover before the source connects replaces the first listener (QEMU
        // lets it be run again while paused): the first stops listening, the load stays paused.
        let replaced = try Transport.listen(.unix(path: MultifdEngineTests.socketPath()))
        try engine.recover(from: replaced)
        // A good one: the received bitmap says pages 1-3 are still to come (page 0 arrived before the break).
        let listener = try Transport.listen(.unix(path: MultifdEngineTests.socketPath()))
        try engine.recover(from: listener)
        usleep(100_000)
        #expect(throws: ChannelError.self, "the replaced listener is closed") { _ = try Transport.connect(replaced.address) }
        #expect(engine.status == .postcopyPaused)
        var resumed = FrameEncoder(), urgent = FrameEncoder()
        let channel = try Self.reconnect(listener.address, &resumed, identity: ChannelIdentity(role: .main, migrationID: Kit.id),
                                         first: (.resume, plan))
        let urgentChannel = try Transport.connect(listener.address)
        try urgentChannel.write(StreamHeader.encode(ChannelIdentity(role: .postcopyPreempt, migrationID: Kit.id)))
        let answers = ReturnPathReader(channel: channel)
        answers.start()
        let bitmap = answers.next(timeout: .seconds(10))
        #expect(bitmap == .message(.receivedBitmap(block: 0, words: [~UInt64(0b1110), .max, .max, .max])), "\(String(describing: bitmap))")
        let deadline = ContinuousClock.now + .seconds(10)
        while engine.status != .postcopyActive && ContinuousClock.now < deadline { usleep(10_000) }
        #expect(engine.status == .postcopyActive)
        #expect(engine.pauseReason == nil)
        // Page 2 on the preempt channel, 1 and 3 on the main one; then both ends.
        let two = Kit.pages([(8192, 0x42)])
        try urgentChannel.write(urgent.frame(.pages, payload: two.payload, tail: two.tail) + urgent.end())
        let rest = Kit.pages([(4096, 0x41), (12288, 0x43)])
        try channel.write(resumed.frame(.pages, payload: rest.payload, tail: rest.tail))
        try channel.write(resumed.end())
        let outcome = destination.outcome()
        guard case .success? = outcome else { Issue.record("destination: \(String(describing: outcome))"); return }
        for (index, fill) in [UInt8(0x40), 0x41, 0x42, 0x43].enumerated() {
            #expect(destination.page(index * 4096) == [UInt8](repeating: fill, count: 4096), "page \(index)")
        }
        #expect(engine.postcopyStatistics?.pauses == 1, "one break; refused reconnections and a replaced listener are no new pause")
        channel.close()
        urgentChannel.close()
        answers.join()
    }
}
