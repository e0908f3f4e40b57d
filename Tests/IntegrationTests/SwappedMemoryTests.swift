import Foundation
import Testing
@testable import GuestMemory
import Migration
import MigrationProtocol
import Transport

/// A swap file, switched on for one test and always switched off and removed.
///
/// zswap is switched on with it (and restored after): without zswap a page
/// written to a swap file stays in the swap cache, where `mincore` still finds
/// it, until memory pressure frees it; zswap stores synchronously, so
/// `MADV_PAGEOUT` takes the page out of RAM at once.  A zswap host is also
/// where the bug this guards against bites hardest.
final class TemporarySwap {
    let path: String
    let zswapWasOff: Bool
    static let zswapEnabled = "/sys/module/zswap/parameters/enabled"

    init?(megabytes: Int) {
        path = "/tmp/ferry-swap-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard getuid() == 0,
              Self.run("/usr/bin/fallocate", "-l", "\(megabytes)M", path) || Self.run("/bin/dd", "if=/dev/zero", "of=\(path)", "bs=1M", "count=\(megabytes)"),
              chmod(path, 0o600) == 0, Self.run("/usr/sbin/mkswap", path), Self.run("/usr/sbin/swapon", path)
        else {
            unlink(path)
            return nil
        }
        zswapWasOff = (try? String(contentsOfFile: Self.zswapEnabled, encoding: .utf8))?.hasPrefix("N") ?? false
        if zswapWasOff { try? "Y".write(toFile: Self.zswapEnabled, atomically: false, encoding: .utf8) }
    }

    func remove() {
        if zswapWasOff { try? "N".write(toFile: Self.zswapEnabled, atomically: false, encoding: .utf8) }
        _ = Self.run("/usr/sbin/swapoff", path)
        unlink(path)
    }

    /// Whether a swap file can be switched on here (root, swapon accepts a file on /tmp).
    static let available: Bool = {
        guard let swap = TemporarySwap(megabytes: 4) else { return false }
        swap.remove()
        return true
    }()

    @discardableResult
    static func run(_ executable: String, _ arguments: String...) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }
}

/// Guest memory pushed out to swap must still be found resident and migrate
/// byte for byte: `mincore` calls a swapped-out page not resident, and a chunk
/// it called empty went out as zero pages without being read.
@Suite(.serialized, .enabled(if: TemporarySwap.available, "needs root and a swap file that swapon accepts"))
struct SwappedMemoryTests {
    static let chunk = 2 << 20
    /// Eight 2 MiB chunks; data in chunks 1 (every page), 3 (one page) and 6 (every other page).
    static let byteCount = 16 << 20
    static let writtenChunks = [1, 3, 6]
    static var writtenPages: [Int] {
        let perChunk = chunk / 4096
        return Array(perChunk..<2 * perChunk) + [3 * perChunk + 17] + Array(stride(from: 6 * perChunk, to: 7 * perChunk, by: 2))
    }

    static func pattern(page: Int) -> [UInt8] {
        (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ page &* 31) | 1 }
    }

    /// A block with the written pages filled, then paged out, and the written pages still in RAM.
    ///
    /// Some pages stay in RAM however often they are paged out (1 of 1281 on a busy host, 24 of
    /// 769 on a CI machine): the tests count on most being swapped out, the lone page of chunk 3
    /// (a chunk whose only data is swapped) among them, and expect of the rest what is true of
    /// pages in RAM.
    static func swappedOutBlock(_ backend: MemoryBackend) throws -> (block: RAMBlock, stillInRAM: [Int]) {
        let mapping = try HostMapping(byteCount: UInt64(byteCount), backend: backend)
        for page in writtenPages {
            pattern(page: page).withUnsafeBytes { mapping.storeBytes($0, at: page * 4096) }
        }
        try #require(mapping.pagesInRAM()?.setPages == writtenPages, "the written pages are in RAM before paging out")
        let deadline = ContinuousClock.now + .seconds(5)
        var inRAM = writtenPages
        while !inRAM.isEmpty && ContinuousClock.now < deadline {
            try #require(mapping.pageOut(), "MADV_PAGEOUT refused")
            usleep(20_000)
            inRAM = mapping.pagesInRAM()?.setPages ?? writtenPages
        }
        let perChunk = chunk / 4096
        try #require(inRAM.count * 4 <= writtenPages.count && !inRAM.contains(3 * perChunk + 17),
                     "\(inRAM.count) of \(writtenPages.count) pages stayed in RAM after MADV_PAGEOUT: too little was swapped out")
        return (RAMBlock(name: "pc.ram", mapping: mapping, placements: []), inRAM)
    }

    /// The chunks holding any of `pages`.
    static func chunks(of pages: [Int]) -> [Int] {
        Array(Set(pages.map { $0 * 4096 / chunk })).sorted()
    }

    @Test("swapped-out pages: their chunks are resident", arguments: [MemoryBackend.anon, .memfd])
    func swappedChunksAreResident(backend: MemoryBackend) throws {
        let swap = try #require(TemporarySwap(megabytes: 256), "swapon failed")
        defer { swap.remove() }
        let (block, stillInRAM) = try Self.swappedOutBlock(backend)
        let chunksInRAM = Self.chunks(of: stillInRAM)
        let mapping = block.mapping
        let all = 0..<mapping.byteCount / Self.chunk
        #expect(mapping.residentChunks(chunkBytes: Self.chunk).setPages == Self.writtenChunks)
        #expect(mapping.mincoreChunks(chunkBytes: Self.chunk, chunks: all).setPages == chunksInRAM,
                "mincore sees only chunks with a page in RAM, not chunk 3's swapped page: the defect")
        if backend == .anon {
            #expect(mapping.pagemapChunks(chunkBytes: Self.chunk, chunks: all)?.setPages == Self.writtenChunks, "the pre-6.7 fallback")
        } else {
            let scanned = try #require(mapping.scannedChunks(chunkBytes: Self.chunk, bytes: 0..<mapping.byteCount)?.setPages)
            #expect(Set(scanned).isSubset(of: chunksInRAM), "a swapped shmem page leaves no page-table entry")
        }
        let after = mapping.pagesInRAM()?.setPages ?? Self.writtenPages
        #expect(Set(after).isSubset(of: stillInRAM), "asking for residency brought no page back")
    }

    @Test("swapped-out pages migrate byte for byte, not as zero pages", arguments: [MemoryBackend.anon, .memfd])
    func swappedPagesMigrate(backend: MemoryBackend) throws {
        let swap = try #require(TemporarySwap(megabytes: 256), "swapon failed")
        defer { swap.remove() }
        let source = try Self.swappedOutBlock(backend).block
        let target = RAMBlock(name: "pc.ram", mapping: try HostMapping(byteCount: UInt64(Self.byteCount), backend: .anon), placements: [])
        let info = try Self.migrate(source, to: target)
        #expect(info.status == .completed, "\(info.errorDescription ?? "")")

        var differing: [Int] = []
        for page in 0..<Self.byteCount / 4096 {
            let same = source.mapping.withBytes(at: page * 4096, count: 4096) { x in
                target.mapping.withBytes(at: page * 4096, count: 4096) { y in x.elementsEqual(y) }
            }
            if !same { differing.append(page) }
        }
        #expect(differing.count == 0, "pages differ (first \(differing.prefix(4))); zero on the destination: \(differing.allSatisfy { target.mapping.isZeroPage(at: $0 * 4096) })")
        for page in Self.writtenPages.prefix(3) {
            source.mapping.withBytes(at: page * 4096, count: 4096) { #expect(Array($0) == Self.pattern(page: page)) }
        }
    }

    /// The real engine over a Unix socket: every page dirty once, no devices, a "VM" that only records.
    static func migrate(_ source: RAMBlock, to target: RAMBlock) throws -> MigrationInfo {
        let configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1)
        let path = "/tmp/ferry-swapped-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Transport.listen(.unix(path: path))
        defer { listener.close() }
        let destination = DestinationThread(listener: listener, configuration: configuration, blocks: [target], devices: [])

        let vm = SwitchoverRetryTests.RecordingVM()
        var parameters = MigrationParameters()
        parameters.maxBandwidth = 1 << 40
        let engine = PrecopySource(
            .init(channel: try Transport.connect(.unix(path: path)), configuration: configuration,
                  ram: RAMMigration(blocks: [source], tracker: SwitchoverRetryTests.OneShotDirtyLog(pages: byteCount / 4096)),
                  devices: [], vm: vm),
            parameters: parameters, capabilities: MigrationCapabilities(), onStatus: { _ in })
        engine.run()
        try #require(destination.wait(), "the destination never finished")
        return engine.info
    }
}
