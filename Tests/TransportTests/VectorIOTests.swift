import CLinuxUAPI
import Glibc
import GuestMemory
import Migration
import Testing
@testable import Transport

@Suite("gather writes and scatter reads on descriptors")
struct VectorIOTests {
    /// Headers and 1024 pages taken in reverse order, so no two segments merge:
    /// 2048 segments, twice IOV_MAX, 4 MiB, far more than a socket buffer.
    static func headersAndPages(_ mapping: HostMapping, pages: Int) -> (GatherList, [UInt8]) {
        var list = GatherList()
        var expected: [UInt8] = []
        for page in stride(from: pages - 1, through: 0, by: -1) {
            let header: [UInt8] = [0xF0, UInt8(page & 0xFF), UInt8(page >> 8), 0x0F]
            list.append(header)
            list.append(mapping, offset: page * 4096, count: 4096)
            expected += header
            expected += Kit.page(page)
        }
        return (list, expected)
    }

    @Test("a gather write of headers and guest pages arrives byte for byte", arguments: ["unix", "tcp"])
    func gatherWrite(kind: String) throws {
        let mapping = try Kit.filledMapping(pages: 1024)
        let (list, expected) = Self.headersAndPages(mapping, pages: 1024)
        #expect(list.segmentCount == 2048)
        let (writer, reader) = kind == "tcp" ? try Kit.tcpPair() : try Kit.socketPair()
        let received = ReaderThread(reader, count: expected.count)
        try writer.write(list)
        let bytes = try received.wait()
        #expect(bytes.count == expected.count)
        #expect(Kit.firstDifference(bytes, expected) == nil, "the bytes differ from what was sent")
    }

    @Test("a channel limited to bursts (postcopy's background) delivers a gather write byte for byte", arguments: [1000, 16 << 10])
    func burstWrite(burst: Int) throws {
        let mapping = try Kit.filledMapping(pages: 1024)
        let (list, expected) = Self.headersAndPages(mapping, pages: 1024)
        let (writer, reader) = try Kit.tcpPair()
        defer { writer.close(); reader.close() }
        writer.limitBursts(burst)
        let received = ReaderThread(reader, count: expected.count)
        try writer.write(list)
        let bytes = try received.wait()
        #expect(bytes.count == expected.count)
        #expect(Kit.firstDifference(bytes, expected) == nil, "the bytes differ from what was sent")
    }

    @Test("one burst call sends at most the burst, ending inside a vector, and at most 64 vectors")
    func oneBurst() throws {
        let mapping = try Kit.filledMapping(pages: 100)
        let (list, expected) = Self.headersAndPages(mapping, pages: 100)        // 200 segments
        let (writer, reader) = try Kit.tcpPair()
        defer { writer.close(); reader.close() }
        // 5000 bytes: a header, a page, a header and 896 bytes of the next page.
        let first = list.withIOVectors { CLinuxUAPI_write_burst(writer.descriptor, $0.baseAddress!, Int32($0.count), 5000) }
        #expect(first == 5000)
        #expect(try ReaderThread(reader, count: 5000).wait() == Array(expected.prefix(5000)))
        // A burst larger than 64 vectors hold: the first 64 vectors whole.
        let second = list.withIOVectors { CLinuxUAPI_write_burst(writer.descriptor, $0.baseAddress!, Int32($0.count), 1 << 20) }
        #expect(second == 32 * (4 + 4096))
        #expect(try ReaderThread(reader, count: second).wait() == Array(expected.prefix(second)))
    }

    @Test("on a descriptor that is not a socket a burst write writes whole")
    func burstOnAPipe() throws {
        let mapping = try Kit.filledMapping(pages: 2)
        let (list, expected) = Self.headersAndPages(mapping, pages: 2)         // 8200 bytes: under a pipe's buffer
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let written = list.withIOVectors { CLinuxUAPI_write_burst(ends[1], $0.baseAddress!, Int32($0.count), 1000) }
        #expect(written == expected.count)
        var bytes = [UInt8](repeating: 0, count: expected.count)
        #expect(read(ends[0], &bytes, bytes.count) == expected.count)
        #expect(bytes == expected)
    }

    @Test("short transfers resume mid-segment and never pass more than IOV_MAX vectors")
    func shortTransfers() throws {
        let mapping = try Kit.filledMapping(pages: 1024)
        let (list, expected) = Self.headersAndPages(mapping, pages: 1024)
        var generator = SystemRandomNumberGenerator()
        var moved: [UInt8] = []
        var calls = 0
        let outcome = list.withIOVectors { vectors in
            DescriptorChannel.transferAll(vectors) { pointer, count in
                calls += 1
                #expect(count >= 1 && count <= 1024)
                // Moves a random short amount, often ending inside a vector, like a short writev.
                var budget = Int.random(in: 1...9000, using: &generator)
                var total = 0
                for index in 0..<Int(count) where budget > 0 {
                    let vector = pointer[index]
                    let take = min(budget, vector.iov_len)
                    let bytes = UnsafeRawBufferPointer(start: vector.iov_base, count: take)
                    moved += bytes
                    budget -= take
                    total += take
                }
                return total
            }
        }
        #expect(outcome == .complete)
        #expect(calls > 2048 / 1024)
        #expect(Kit.firstDifference(moved, expected) == nil, "the bytes moved differ from the list")
    }

    @Test("a transfer that moves 0 bytes has ended; a negative result is the errno")
    func endAndFailure() throws {
        let mapping = try Kit.filledMapping(pages: 2)
        var list = GatherList()
        list.append(mapping, offset: 0, count: 8192)
        #expect(list.withIOVectors { DescriptorChannel.transferAll($0) { _, _ in 0 } } == .ended)
        #expect(list.withIOVectors { DescriptorChannel.transferAll($0) { _, _ in -Int(EIO) } } == .failed(errno: EIO))
        #expect(GatherList().withIOVectors { DescriptorChannel.transferAll($0) { _, _ in -1 } } == .complete)
    }

    /// Every page of 3072 except each third, in reverse order: 2048 separate targets, 8 MiB.
    static func scatterTargets(_ mapping: HostMapping) -> (ScatterList, [Int]) {
        var list = ScatterList()
        let pages = stride(from: 3071, through: 0, by: -1).filter { $0 % 3 != 2 }
        for page in pages { list.append(mapping, offset: page * 4096, count: 4096) }
        return (list, pages)
    }

    @Test("a scatter read fills guest pages from a writer sending more than a socket buffer", arguments: ["unix", "tcp"])
    func scatterRead(kind: String) throws {
        let mapping = try HostMapping(byteCount: 3072 * 4096, backend: .anon)
        let (list, pages) = Self.scatterTargets(mapping)
        #expect(list.byteCount == 8 << 20)
        let (writer, reader) = kind == "tcp" ? try Kit.tcpPair() : try Kit.socketPair()
        let stream = Kit.stream(pages: pages.count, seed: 0x5A)
        let sender = WorkerThread {
            for start in stride(from: 0, to: stream.count, by: 1 << 20) { try writer.write(Array(stream[start..<start + (1 << 20)])) }
        }
        try reader.read(into: list)
        #expect(sender.wait() == nil)
        for (index, page) in pages.enumerated() {
            guard Kit.page(of: mapping, at: page * 4096) == Kit.page(index, seed: 0x5A) else {
                Issue.record("page \(page) (target \(index)) differs")
                return
            }
        }
        for page in stride(from: 2, to: 3072, by: 3) { #expect(mapping.isZeroPage(at: page * 4096), "page \(page) was not a target") }
    }

    @Test("the stream ending in the middle of a scatter read gives endOfStream")
    func endOfStreamMidRead() throws {
        let mapping = try HostMapping(byteCount: 3072 * 4096, backend: .anon)
        let (list, pages) = Self.scatterTargets(mapping)
        let (writer, reader) = try Kit.socketPair()
        let half = Kit.stream(pages: pages.count / 2, seed: 7)
        let sender = WorkerThread {
            try writer.write(half)
            writer.close()
        }
        #expect(throws: ChannelError.endOfStream) { try reader.read(into: list) }
        #expect(sender.wait() == nil)
        #expect(Kit.page(of: mapping, at: pages[0] * 4096) == Kit.page(0, seed: 7), "what came was stored")
    }

    @Test("a scatter read that waits out the inactivity limit fails with .inactive")
    func inactiveScatterRead() throws {
        let mapping = try HostMapping(byteCount: 4096, backend: .anon)
        var list = ScatterList()
        list.append(mapping, offset: 0, count: 4096)
        let (writer, reader) = try Kit.socketPair()
        defer { writer.close() }
        reader.limitInactivity(.milliseconds(100))
        #expect(throws: ChannelError.inactive(.milliseconds(100))) { try reader.read(into: list) }
    }

    @Test("a gather write to a closed peer fails as write does: Broken pipe")
    func gatherWriteBrokenPipe() throws {
        let mapping = try Kit.filledMapping(pages: 256)
        var list = GatherList()
        list.append([1, 2, 3])
        list.append(mapping, offset: 0, count: 256 * 4096)
        let (writer, reader) = try Kit.socketPair()
        reader.close()
        #expect(throws: ChannelError.system("write to the migration channel", errno: EPIPE)) { try writer.write(list) }
    }
}
