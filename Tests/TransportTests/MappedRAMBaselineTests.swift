import Glibc
@testable import Migration
import MigrationProtocol
import Testing
import Transport

/// Which file an incremental save (`x-ferry-incremental`) continues: only a
/// complete one laid out as this machine's RAM would be.
@Suite struct MappedRAMBaselineTests {
    static let layout = try! MappedRAMLayout(blocks: [.init(name: "pc.ram", byteCount: 4 << 20, pageSize: 4096)])

    /// Writes `header` (after `change`) at the start of a file as long as the layout
    /// needs, and asks the saver whether it would continue it.
    func baseline(_ change: (inout MappedRAMHeader) -> Void) throws -> MappedRAMHeader? {
        let path = "/tmp/ferry-baseline-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).mapped"
        defer { unlink(path) }
        var header = MappedRAMHeader(layout: Self.layout, generation: 3, complete: true, stateLength: 100)
        change(&header)
        let bytes = header.encode()
        // The tampered header must still decode: the saver, not the decoder, refuses it.
        _ = try MappedRAMHeader(decoding: bytes, fileLength: Self.layout.stateOffset + 100)
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        try #require(fd >= 0)
        try #require(bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == bytes.count)
        try #require(ftruncate(fd, off_t(Self.layout.stateOffset + 100)) == 0)
        let file = MigrationFile(adopting: fd, direct: nil, base: 0)
        return MappedRAMSaver.existing(in: file, layout: Self.layout)
    }

    @Test("a complete file of the layout is continued; one whose header claims 8 KiB pages is not (the saver indexes it by 4 KiB pages)")
    func pageSizeMustMatch() throws {
        #expect(try baseline { _ in }?.generation == 3)
        #expect(try baseline { header in
            header.pageSize = 8192
            for index in header.entries.indices { header.entries[index].pageSize = 8192 }
        } == nil)
        #expect(try baseline { $0.flags = 0 } == nil)          // incomplete
    }
}
