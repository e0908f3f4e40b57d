import Glibc
import Testing
@testable import GuestMemory
@testable import Migration
import MigrationProtocol
import Transport

/// A machine that quits before its mapped-ram load starts: the load never
/// starts (a file, unlike a socket, has no shutdown that would stop it).
@Suite(.serialized) struct MappedRAMAbortTests {
    typealias Kit = SwitchoverRetryTests

    /// A destination restoring `path` (saved from `source`) into a zero block.
    static func destination(_ path: String, source: RAMBlock) throws -> (MigrationDestination, RAMBlock) {
        let target = try MultifdEngineTests.block(filled: false)
        let file = try MigrationFile.open(path: path, writing: false, direct: false, base: 0)
        let vm = Kit.RecordingVM()
        let destination = MigrationDestination(
            channel: file, configuration: MigrationConfiguration(blocks: RAMMigration.layout(of: [source]), vcpuCount: 1),
            ram: RAMMigration(blocks: [target], tracker: nil, destinationStartsZero: true),
            devices: [Kit.StopSizedDevice(vm: vm, largeStops: 0)], mappedRAM: (file, 2), onStatus: { _ in })
        return (destination, target)
    }

    @Test("aborted before its mapped-ram load starts, a destination fails it as cancelled and loads no page; not aborted, it loads them")
    func abortedBeforeTheLoadStarts() throws {
        let path = AnalyzeEngineTests.path("abort")
        defer { unlink(path) }
        let source = try AnalyzeEngineTests.save(to: path, mappedRAM: MappedRAMSettings(writers: 1))
        let zero = [UInt8](repeating: 0, count: 4096)
        let page = try #require((0..<16).first { AnalyzeEngineTests.content(of: source, page: $0) != zero })

        let (aborted, untouched) = try Self.destination(path, source: source)
        aborted.abort()
        #expect(throws: MigrationError.cancelled) { try aborted.run() }
        #expect(aborted.status == .failed)
        // Before, the load ran to its end: the page was there.
        #expect(AnalyzeEngineTests.content(of: untouched, page: page).allSatisfy { $0 == 0 }, "a page was loaded")

        let (loading, loaded) = try Self.destination(path, source: source)
        try loading.run()
        #expect(AnalyzeEngineTests.content(of: loaded, page: page) == AnalyzeEngineTests.content(of: source, page: page), "the page differs")
    }
}
