import Foundation
import Synchronization
import Testing
@testable import Migration
import Transport

/// The main channel's delivery sampled every 20 ms for postcopy's pace.
@Suite struct LinkRateSamplerTests {
    @Test("over TCP loopback with bytes flowing: a sample every 20 ms, at the rate the peer took them")
    func samplesATCPChannel() throws {
        let listener = try Transport.listen(.tcp(host: "127.0.0.1", port: 0))
        defer { listener.close() }
        let sender = try Transport.connect(listener.address)
        let receiver = try listener.accept(timeout: .seconds(10))
        defer { sender.close(); receiver.close() }
        let sampler = LinkRateSampler(sender)
        let received = Atomic<Int>(0)
        let reading = Thread {
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while let count = try? receiver.read(upTo: buffer.count, into: &buffer, at: 0), count > 0 {
                received.add(count, ordering: .relaxed)
            }
        }
        reading.start()
        let chunk = [UInt8](repeating: 0x33, count: 256 << 10)
        var sent = 0
        let start = ContinuousClock.now
        // 0.8 s (40 intervals), longer while the sampler has fewer samples than postcopy needs:
        // on a loaded host its thread may miss intervals (CI once saw 9 in 0.8 s).
        while ContinuousClock.now - start < .milliseconds(800)
                || (PostcopyPacing.linkRate(sampler.samples) == nil && ContinuousClock.now - start < .seconds(10)) {
            try sender.write(chunk)
            sent += chunk.count
        }
        let stopping = ContinuousClock.now
        sampler.stop()
        #expect(ContinuousClock.now - stopping < .milliseconds(500), "stops within about one interval")
        let samples = sampler.samples
        // Loopback carries far more than 10 MB/s, whatever the host's load; never more than was sent.
        let link = try #require(PostcopyPacing.linkRate(samples), "\(samples.count) counts in \(stopping - start)")
        #expect(link > 10e6)
        #expect(zip(samples, samples.dropFirst()).allSatisfy { $0.bytes <= $1.bytes && $0.at < $1.at })
        // Segments counted at the full segment size: on loopback's 64 KiB ones, more than was sent, not half again.
        #expect(Double(samples.last!.bytes - samples.first!.bytes) <= Double(sent) * 1.5)
    }

    @Test("on a channel that is not TCP the sampler ends at once with nothing")
    func nothingWithoutTCP() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let channel = DescriptorChannel(adopting: fds[0], returnPath: true)
        let other = DescriptorChannel(adopting: fds[1], returnPath: true)
        defer { channel.close(); other.close() }
        let sampler = LinkRateSampler(channel)
        Thread.sleep(forTimeInterval: 0.1)
        sampler.stop()
        #expect(sampler.samples.isEmpty)
    }
}
