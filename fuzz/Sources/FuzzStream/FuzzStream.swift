import FuzzSupport
import Glibc
import GuestMemory
import Migration
import MigrationProtocol

/// libFuzzer target `stream`: the fuzz input is the byte streams of an
/// incoming migration, loaded by a real `MigrationDestination` into real RAM
/// mappings.  The input is cut before every "FERRYMIG" (a stream header's
/// magic) after its start: the first part is the main channel, each later one
/// a connection the destination's acceptor hands out when the main channel's
/// `channels` frame announces multifd channels (loaded by the production
/// `MultifdReceivers`, a thread each, meeting at `sync` frames).
///
/// A thrown `MigrationError` is the expected outcome for most inputs; a trap
/// (a failed precondition, an out-of-range index), a crash or a hang is a
/// finding.  Writes outside the mappings trap in `HostMapping`'s bounds checks.
///
/// Two things keep it fast (about the cost of the decoding itself):
/// - the mappings are made and prefaulted once; inputs reuse them without
///   clearing (`destinationStartsZero` is then not quite true, which only
///   means a zero record may skip clearing a page an earlier input wrote);
/// - before the streams are loaded, every complete frame's sequence number and
///   checksum are rewritten to match its place and payload, an uncompressed
///   page frame's per-page checksums to match its tail, and an `end` frame's
///   count and digest to match the frames before it, so mutations reach the
///   decoders behind those checks instead of stopping at them (`FrameFixer`)
///   (the checks themselves are fuzzed by inputs whose frames are cut short).
///   An input with a frame whose declared payload and tail are more than
///   `truncatedLengthLimit` bytes longer than what is left of its channel is
///   not run: it would only measure the reader waiting for bytes that never come.

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    let arguments = CommandLine.arguments
    if let flag = arguments.firstIndex(of: "--make-seeds") {
        guard flag + 1 < arguments.count else { fatalError("usage: FuzzStream --make-seeds DIR") }
        StreamSeeds.write(to: arguments[flag + 1])
        exit(0)
    }
    _ = StreamTarget.shared
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data = unsafe data, size > 0 else { return 0 }
    // SAFETY: libFuzzer hands us `size` readable bytes at `data` for the duration of this call.
    let bytes = unsafe Array(UnsafeBufferPointer(start: data, count: size))
    var channels = StreamTarget.channels(of: bytes)
    for i in channels.indices {
        guard FrameFixer.fix(&channels[i], truncatedLengthLimit: StreamTarget.truncatedLengthLimit) else { return 0 }
    }
    StreamTarget.shared.load(channels)
    return 0
}

/// The destination the fuzzer feeds: its configuration, RAM and devices.
final class StreamTarget: Sendable {
    static let shared = StreamTarget()
    static let truncatedLengthLimit: UInt64 = 1 << 20
    /// `FERRY_FUZZ_EXPLAIN=1 FuzzStream FILE...` prints how each input ends.
    static let explain = unsafe getenv("FERRY_FUZZ_EXPLAIN") != nil

    /// Two blocks: one whose last 2 MiB chunk is partial, one smaller than a chunk.
    static let blockLayout: [(name: String, bytes: UInt64)] = [("pc.ram", 3 << 20), ("vga.ram", 64 << 10)]
    static let vcpuCount: UInt32 = 1

    let blocks: [RAMBlock]
    let configuration: MigrationConfiguration

    init() {
        do {
            blocks = try Self.blockLayout.map { name, bytes throws(GuestMemoryError) in
                let mapping = try HostMapping(byteCount: bytes, backend: .anon)
                try mapping.prefault()
                return RAMBlock(name: name, mapping: mapping, placements: [])
            }
        } catch { fatalError("cannot map the fuzz target's RAM: \(error)") }
        configuration = MigrationConfiguration(blocks: RAMMigration.layout(of: blocks), vcpuCount: Self.vcpuCount)
    }

    /// The devices whose sections a stream must carry.
    static func makeDevices() -> [any Migratable] {
        [FuzzDevice(sectionName: "cpu/0", sectionVersion: 1, exactSize: 64),
         FuzzDevice(sectionName: "serial", sectionVersion: 2, exactSize: nil)]
    }

    /// The input cut into channels: before each stream header's magic after the start.
    static func channels(of bytes: [UInt8]) -> [[UInt8]] {
        let magic = StreamHeader.magic
        var starts = [0]
        var i = 1
        while i + magic.count <= bytes.count {
            if bytes[i] == magic[0] && bytes[i..<i + magic.count].elementsEqual(magic) {
                starts.append(i)
                i += magic.count
            } else {
                i += 1
            }
        }
        return starts.indices.map { n in Array(bytes[starts[n]..<(n + 1 < starts.count ? starts[n + 1] : bytes.count)]) }
    }

    func load(_ channels: [[UInt8]]) {
        let ram = RAMMigration(blocks: blocks, tracker: nil, destinationStartsZero: true)
        let destination = MigrationDestination(channel: InputChannel(channels[0]),
                                               acceptor: InputAcceptor(Array(channels.dropFirst())),
                                               configuration: configuration, ram: ram,
                                               devices: Self.makeDevices(), channelTimeout: .zero, onStatus: { _ in })
        do { try destination.run() } catch {
            if Self.explain { print("refused: \(error)") }
            return
        }
        if Self.explain { print("loaded: \(ram.stats.normalPages) data pages, \(ram.stats.zeroPages) zero pages") }
        destination.complete()
    }
}

/// A device with a section of one version: of exactly `exactSize` bytes if
/// given (like a vCPU's fixed structs), else at most 4096 (like the UART's input).
final class FuzzDevice: MigratableDevice {
    let sectionName: String
    let sectionVersion: UInt16
    let exactSize: Int?

    init(sectionName: String, sectionVersion: UInt16, exactSize: Int?) {
        self.sectionName = sectionName
        self.sectionVersion = sectionVersion
        self.exactSize = exactSize
    }

    var estimatedSize: UInt64 { UInt64(exactSize ?? 4096) }

    /// What the seeds carry: a recognisable pattern of the right size.
    func save() throws(MigrationError) -> [UInt8] {
        (0..<(exactSize ?? 100)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
    }

    func load(_ section: StateSection) throws(MigrationError) {
        if let exactSize, section.state.count != exactSize {
            throw .stream(.malformed("section '\(sectionName)' has \(section.state.count) bytes, expected \(exactSize)"))
        }
        guard section.state.count <= 4096 else { throw .stream(.malformed("section '\(sectionName)' is too long")) }
    }
}
