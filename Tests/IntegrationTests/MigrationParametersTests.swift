import Migration
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
}
