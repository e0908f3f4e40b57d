import CLinuxUAPI
import Glibc
import GuestMemory
import Migration
import Testing
@testable import Transport

/// A large read from a TCP socket waits until all its bytes are there
/// (`DescriptorChannel.readWhole`, `SO_RCVLOWAT`), not for the first train of
/// packets; bytes that stop coming part-way are still read, and a read of them
/// never waits for more than its count.
@Suite struct WholeReadTests {
    static let count = 256 << 10

    /// A TCP loopback pair whose receiving socket's buffer is 8 MiB, as a
    /// migration's grow to once TCP's autotuning has seen their first frames
    /// (`SO_RCVBUFFORCE`, root: the tests run as root): a fresh socket's 128 KiB
    /// is too small for a 256 KiB read to wait for its bytes whole, and
    /// autotuning over loopback grows it by how fast the reader happens to be.
    static func warmPair() throws -> (DescriptorChannel, DescriptorChannel) {
        let (writer, reader) = try Kit.tcpPair()
        var bytes: Int32 = 4 << 20     // the kernel doubles it
        let set = setsockopt(reader.descriptor, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, socklen_t(MemoryLayout<Int32>.size))
        try #require(set == 0, "SO_RCVBUFFORCE: errno \(errno)")
        let room = Int(CLinuxUAPI_socket_receive_buffer(reader.descriptor)) / 4
        try #require(room >= count, "the receive buffer is only \(room * 4) bytes")
        return (writer, reader)
    }

    /// Writes `stream` in `pieces` equal parts, `gap` apart, on a thread of its own.
    static func dribble(_ stream: [UInt8], to writer: DescriptorChannel, pieces: Int, gap: Duration,
                        thenClose: Bool = false) -> WorkerThread {
        WorkerThread {
            let size = stream.count / pieces
            for piece in 0..<pieces {
                if piece > 0 { usleep(UInt32(gap.socketMicroseconds)) }
                let end = piece == pieces - 1 ? stream.count : (piece + 1) * size
                try writer.write(Array(stream[piece * size..<end]))
            }
            if thenClose { writer.close() }
        }
    }

    @Test("a 256 KiB read over TCP, its bytes sent in eight parts 1 ms apart, returns them all at once")
    func wholeAtOnce() throws {
        let (writer, reader) = try Self.warmPair()
        defer { writer.close(); reader.close() }
        let stream = Kit.stream(pages: Self.count / 4096, seed: 3)
        let sending = Self.dribble(stream, to: writer, pieces: 8, gap: .milliseconds(1))
        var buffer = [UInt8](repeating: 0, count: Self.count)
        // Before the first part is sent the socket holds nothing: a read that
        // returned what was there would return one part (32 KiB).
        let got = try reader.read(upTo: Self.count, into: &buffer, at: 0)
        #expect(sending.wait() == nil)
        #expect(got == Self.count, "the read returned \(got) bytes, not its whole count")
        #expect(Kit.firstDifference(buffer, stream) == nil)
    }

    @Test("bytes that stop coming part-way are read after the wait, and the rest, sent 300 ms later, by the next read")
    func partThenRest() throws {
        let (writer, reader) = try Self.warmPair()
        defer { writer.close(); reader.close() }
        let stream = Kit.stream(pages: Self.count / 4096, seed: 4)
        let sending = Self.dribble(stream, to: writer, pieces: 2, gap: .milliseconds(300))
        var buffer = [UInt8](repeating: 0, count: Self.count)
        let start = ContinuousClock.now
        var got = 0
        var reads: [Int] = []
        while got < Self.count {
            let n = try reader.read(upTo: Self.count - got, into: &buffer, at: got)
            #expect(n > 0)
            reads.append(n)
            got += n
            if got == Self.count / 2 {
                // The half that came was read well before the rest was sent.
                #expect(ContinuousClock.now - start < .milliseconds(250), "the first half waited for bytes never sent")
            }
        }
        #expect(sending.wait() == nil)
        #expect(reads.first == Self.count / 2, "reads: \(reads)")
        #expect(Kit.firstDifference(buffer, stream) == nil)
    }

    @Test("a read into guest memory (readv) after a large read that took part of its count waits only for its own bytes")
    func scatteredAfterPart() throws {
        let (writer, reader) = try Self.warmPair()
        defer { writer.close(); reader.close() }
        let pages = 64
        let stream = Kit.stream(pages: pages, seed: 5)
        // 128 KiB now, the other 128 KiB 100 ms later.
        let sending = Self.dribble(stream, to: writer, pieces: 2, gap: .milliseconds(100))
        var buffer = [UInt8](repeating: 0, count: Self.count)
        let first = try reader.read(upTo: Self.count, into: &buffer, at: 0)
        #expect(first == Self.count / 2, "the large read took \(first) bytes")
        // Its low-water mark (256 KiB) must not hold a blocking readv of the 128 KiB left.
        let mapping = try HostMapping(byteCount: UInt64(pages / 2 * 4096), backend: .anon)
        var list = ScatterList()
        list.append(mapping, offset: 16 * 4096, count: 16 * 4096)     // the second half first
        list.append(mapping, offset: 0, count: 16 * 4096)
        let targets = list
        let rest = WorkerThread { try reader.read(into: targets) }
        let failure = rest.wait()
        if failure != nil { reader.shutdown() }     // frees a readv still waiting
        #expect(failure == nil, "the readv waited beyond its own bytes")
        #expect(sending.wait() == nil)
        #expect(Kit.firstDifference(Array(buffer[0..<first]), Array(stream[0..<first])) == nil)
        for page in 0..<pages / 2 {
            let at = page < 16 ? (16 + page) * 4096 : (page - 16) * 4096
            #expect(Kit.firstDifference(Kit.page(of: mapping, at: at), Kit.page(pages / 2 + page, seed: 5)) == nil,
                    "page \(pages / 2 + page)")
        }
    }

    @Test("a large read of a stream that ends part-way returns what came, then the end")
    func endPartWay() throws {
        let (writer, reader) = try Self.warmPair()
        defer { reader.close() }
        let stream = Kit.stream(pages: 24, seed: 6)     // 96 KiB of the 256 asked for
        let sending = Self.dribble(stream, to: writer, pieces: 3, gap: .milliseconds(30), thenClose: true)
        var buffer = [UInt8](repeating: 0, count: Self.count)
        var got = 0
        while true {
            let n = try reader.read(upTo: Self.count - got, into: &buffer, at: got)
            if n == 0 { break }
            got += n
        }
        #expect(sending.wait() == nil)
        #expect(got == stream.count)
        #expect(Kit.firstDifference(Array(buffer[0..<got]), stream) == nil)
    }

    @Test("a large read on a quiet TCP channel fails with .inactive after its limit")
    func inactive() throws {
        let (writer, reader) = try Kit.tcpPair()
        defer { writer.close(); reader.close() }
        reader.limitInactivity(.milliseconds(100))
        var buffer = [UInt8](repeating: 0, count: Self.count)
        let start = ContinuousClock.now
        #expect(throws: ChannelError.inactive(.milliseconds(100))) { _ = try reader.read(upTo: Self.count, into: &buffer, at: 0) }
        #expect(ContinuousClock.now - start < .seconds(5))
    }
}
