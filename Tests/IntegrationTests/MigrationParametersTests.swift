@testable import Migration
import Testing

/// QEMU's checks across migration parameters (`migrate_params_check`).
@Suite struct MigrationParametersTests {
    static let refusal = MigrationError.invalidParameter(
        "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99")

    @Test("max-cpu-throttle may not be under cpu-throttle-initial, whichever of them moves")
    func throttleCeilingAtLeastItsFirstStep() throws {
        var parameters = MigrationParameters()
        try parameters.check()                                    // 20 and 99
        try parameters.set("max-cpu-throttle", to: 10)
        #expect(throws: Self.refusal) { try parameters.check() }
        try parameters.set("cpu-throttle-initial", to: 10)
        try parameters.check()
        try parameters.set("max-cpu-throttle", to: 40)
        try parameters.set("cpu-throttle-initial", to: 50)
        #expect(throws: Self.refusal) { try parameters.check() }
    }

    @Test("integers as QEMU's input visitor reads them: the sizes take any uint64, a negative number wraps, the uint8 ones say so past 255")
    func qemuIntegerWidths() throws {
        var parameters = MigrationParameters()
        try parameters.set("max-bandwidth", unsigned: UInt64.max)
        #expect(parameters.maxBandwidth == UInt64.max)
        try parameters.set("max-postcopy-bandwidth", to: -5)
        #expect(parameters.maxPostcopyBandwidth == UInt64.max - 4)
        try parameters.set("avail-switchover-bandwidth", unsigned: 1 << 63)
        #expect(parameters.availSwitchoverBandwidth == 1 << 63)
        #expect(throws: MigrationError.invalidParameter("Parameter 'multifd-channels' expects uint8_t")) {
            try parameters.set("multifd-channels", to: 256)
        }
        #expect(throws: MigrationError.invalidParameter("Parameter 'cpu-throttle-initial' expects uint8_t")) {
            try parameters.set("cpu-throttle-initial", to: -5)
        }
        #expect(throws: MigrationError.invalidParameter("Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99")) {
            try parameters.set("cpu-throttle-initial", to: 100)
        }
        #expect(throws: MigrationError.invalidParameter("Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms")) {
            try parameters.set("downtime-limit", to: -1)
        }
        #expect(throws: MigrationError.invalidParameter("Parameter 'max-bandwidth' expects uint64")) {
            try parameters.set("max-bandwidth", text: "fast")
        }
        #expect(parameters.cpuThrottleInitial == 20 && parameters.multifdChannels == 2 && parameters.downtimeLimit == 300,
                "nothing refused was taken")
    }

    @Test("the switchover's byte budget from the largest parameters saturates instead of trapping")
    func switchoverBudgetOfTheLargestParameters() throws {
        var parameters = MigrationParameters()
        try parameters.set("avail-switchover-bandwidth", unsigned: UInt64.max)
        try parameters.set("downtime-limit", to: 2_000_000)
        let budget = PrecopySource.switchoverBudget(measured: 1e8, parameters)
        #expect(budget.threshold == UInt64.max && budget.bandwidth == 0x1p64)
        try parameters.set("avail-switchover-bandwidth", to: 0)
        #expect(PrecopySource.switchoverBudget(measured: 1e8, parameters).threshold == 200_000_000_000)
        #expect(PrecopySource.byteCount(-1) == 0 && PrecopySource.byteCount(1.5) == 1)
    }
}
