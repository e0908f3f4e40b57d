import EmbeddedGuest
import Testing

@Suite struct WorkloadSpecTests {
    @Test func parsesRatesAndSizes() throws {
        #expect(try WorkloadSpec(parsing: "idle") == .idle)
        #expect(try WorkloadSpec(parsing: "dirty-rate=512M,working-set=1G")
                == WorkloadSpec(dirtyRate: .bytesPerSecond(512 << 20), workingSet: 1 << 30))
        #expect(try WorkloadSpec(parsing: "dirty-rate=max") == WorkloadSpec(dirtyRate: .max))
        #expect(try WorkloadSpec(parsing: "dirty-rate=0") == .idle)
        let random = try WorkloadSpec(parsing: "dirty-rate=max,working-set=1536M,access=random")
        #expect(random == WorkloadSpec(dirtyRate: .max, workingSet: 1536 << 20, randomAccess: true))
        #expect(try WorkloadSpec(parsing: random.description) == random)
        #expect(try WorkloadSpec(parsing: "dirty-rate=1M,access=sweep") == WorkloadSpec(dirtyRate: .bytesPerSecond(1 << 20)))
    }

    @Test func rejectsBadSpecs() {
        #expect(throws: WorkloadSpec.ParseError.badValue(key: "dirty-rate", value: "fast")) { try WorkloadSpec(parsing: "dirty-rate=fast") }
        #expect(throws: WorkloadSpec.ParseError.unknownKey("speed")) { try WorkloadSpec(parsing: "speed=1") }
        #expect(throws: WorkloadSpec.ParseError.missingRate) { try WorkloadSpec(parsing: "working-set=1G") }
        #expect(throws: WorkloadSpec.ParseError.badValue(key: "access", value: "chaotic")) { try WorkloadSpec(parsing: "dirty-rate=1M,access=chaotic") }
        #expect(throws: WorkloadSpec.ParseError.badValue(key: "working-set", value: "12")) { try WorkloadSpec(parsing: "dirty-rate=1M,working-set=12") }
    }

    @Test func byteSizesRejectOverflowAndJunk() {
        #expect(ByteSize.parse("16G") == 16 << 30)
        #expect(ByteSize.parse("99999999999999999999G") == nil)
        #expect(ByteSize.parse("18014398509481984K") == nil)
        #expect(ByteSize.parse("G") == nil)
        #expect(ByteSize.parse("-1M") == nil)
        #expect(ByteSize.parse("") == nil)
    }

    @Test func heartbeatRecordsNeedTheirMagic() {
        var bytes = [UInt8](repeating: 0, count: HeartbeatRecord.byteCount)
        #expect(HeartbeatRecord(bytes: bytes) == nil)
        bytes[0...3] = [0x48, 0x42, 0x54, 0x31]
        bytes[8] = 5
        #expect(HeartbeatRecord(bytes: bytes)?.sequence == 5)
        #expect(HeartbeatRecord(bytes: Array(bytes.prefix(10))) == nil)
    }
}
