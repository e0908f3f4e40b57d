@testable import Migration
import Testing

/// `file:` URIs as QEMU's `file_parse_offset` and `qemu_strtosz` read them.
@Suite struct MigrationURITests {
    @Test("file:PATH,offset=N: the first ',offset=' ends the path; other commas belong to it")
    func fileOffsets() throws {
        #expect(try MigrationURI(parsing: "file:/srv/vm.img") == .file(path: "/srv/vm.img", offset: 0))
        #expect(try MigrationURI(parsing: "file:/srv/a,b.img") == .file(path: "/srv/a,b.img", offset: 0))
        #expect(try MigrationURI(parsing: "file:/srv/a,b.img,offset=4096") == .file(path: "/srv/a,b.img", offset: 4096))
        #expect(try MigrationURI(parsing: "file:/srv/vm.img,offset=0x1000") == .file(path: "/srv/vm.img", offset: 4096))
        #expect(try MigrationURI(parsing: "file:/srv/vm.img,offset=1M").description == "file:/srv/vm.img,offset=1048576")
        #expect(throws: ChannelError.self) { try MigrationURI(parsing: "file:,offset=4096") }
    }

    @Test("offset sizes: B to E suffixes in either case, fractions only with a unit above a byte, nothing past 2^63 - 1")
    func sizes() {
        #expect(MigrationURI.size("4096B") == 4096)
        #expect(MigrationURI.size("4k") == 4096)
        #expect(MigrationURI.size("1.5M") == 3 << 19)
        #expect(MigrationURI.size("2G") == 2 << 30)
        #expect(MigrationURI.size("1P") == 1 << 50)
        #expect(MigrationURI.size("7E") == 7 << 60)
        #expect(MigrationURI.size("8E") == nil)              // 2^63
        #expect(MigrationURI.size("1.5") == nil)
        #expect(MigrationURI.size("1.5B") == nil)
        #expect(MigrationURI.size("1.M") == nil)
        #expect(MigrationURI.size("1.5e3M") == nil)              // digits only after the point
        #expect(MigrationURI.size("12Q") == nil)
        #expect(MigrationURI.size("") == nil)
        #expect(MigrationURI.size("0x") == nil)
        #expect(MigrationURI.size("-1") == nil)
    }
}
