import Foundation
import Synchronization
import Testing
@testable import Migration
@testable import Transport

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
        // TCP's pace was held to 15 % over what the stretches read (the last cap, from 100 ms before the end at most).
        var pace: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        #expect(getsockopt(sender.descriptor, SOL_SOCKET, 47 /* SO_MAX_PACING_RATE */, &pace, &length) == 0)
        #expect(pace < UInt64.max, "a cap is in force")
        let last = try #require(LinkRateSampler.cap(samples))
        #expect(Double(pace) > Double(last) / 2 && Double(pace) < Double(last) * 2, "paced at \(pace), the counts' cap \(last)")
    }

    @Test("the cap: 15 % over the 95th percentile of the 100 ms stretches, none with too few")
    func capOverTheStretches() throws {
        let start = ContinuousClock.now
        // 20 ms counts at 100 MB/s, then a stall, then 100 MB/s again: the stall's stretches are the lowest.
        var bytes: UInt64 = 0
        var samples: [PostcopyPacing.Delivered] = []
        for index in 0..<60 {
            if !(20..<25).contains(index) { bytes += 2_000_000 }
            samples.append(.init(at: start + .milliseconds(20 * index), bytes: bytes))
        }
        #expect(LinkRateSampler.cap(Array(samples.prefix(4))) == nil)
        let cap = try #require(LinkRateSampler.cap(samples))
        #expect(abs(Double(cap) - 115e6) < 1e5, "\(cap)")
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
