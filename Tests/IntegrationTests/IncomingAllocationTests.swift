import Testing
import VMM

/// When an incoming migration allocates guest RAM ahead of the arriving pages.
@Suite struct IncomingAllocationTests {
    @Test func allocatesAheadOnlyIntoMemoryNotYetAllocatedAndNotAboutToBeFreed() {
        var configuration = MachineConfiguration(memoryBytes: 64 << 20)
        #expect(configuration.allocatesAheadOnIncoming(postcopyExpected: false))
        // A switch to postcopy would free the chunks again.
        #expect(!configuration.allocatesAheadOnIncoming(postcopyExpected: true))
        // -mem-prealloc allocated every page already.
        configuration.preallocate = true
        #expect(!configuration.allocatesAheadOnIncoming(postcopyExpected: false))
        #expect(!configuration.allocatesAheadOnIncoming(postcopyExpected: true))
    }
}
