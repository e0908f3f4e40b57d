import Devices
import KVM
import Migration
import MigrationProtocol
import QMP
import Synchronization

/// One vCPU's registers, FPU, MSRs, LAPIC, events and MP state: section "cpu/N".
final class VCPUMigratable: MigratableDevice {
    let vcpu: VirtualCPU
    let sectionName: String
    let sectionVersion: UInt16 = 1
    /// The kernel structs plus MSRs: known before the guest stops.
    var estimatedSize: UInt64 { UInt64(VCPUState.Part.allCases.reduce(0) { $0 + $1.byteCount + 5 } + 64 * 12 + 8) }

    init(_ vcpu: VirtualCPU) {
        self.vcpu = vcpu
        sectionName = "cpu/\(vcpu.index.rawValue)"
    }

    func save() throws(MigrationError) -> [UInt8] {
        do { return StateCodec.encode(try vcpu.captureState()) } catch { throw .state("cannot read \(sectionName): \(error)") }
    }

    func load(_ section: StateSection) throws(MigrationError) {
        let state = try StateCodec.decodeVCPU(section.state)
        do { try vcpu.restoreState(state) } catch { throw .state("cannot load \(sectionName): \(error)") }
    }
}

/// The in-kernel PICs, IOAPIC, PIT and kvm-clock: section "platform".
final class PlatformMigratable: MigratableDevice {
    let vm: VirtualMachine
    let sectionName = "platform"
    let sectionVersion: UInt16 = 1
    var estimatedSize: UInt64 { UInt64(PlatformState.Part.allCases.reduce(0) { $0 + $1.byteCount + 5 } + 1) }

    init(_ vm: VirtualMachine) { self.vm = vm }

    func save() throws(MigrationError) -> [UInt8] {
        do { return StateCodec.encode(try vm.capturePlatformState()) } catch { throw .state("cannot read the platform state: \(error)") }
    }

    func load(_ section: StateSection) throws(MigrationError) {
        let state = try StateCodec.decodePlatform(section.state)
        do { try vm.restorePlatformState(state) } catch { throw .state("cannot load the platform state: \(error)") }
    }
}

/// The COM1 UART: section "serial".
final class SerialMigratable: MigratableDevice {
    let serial: Serial16550
    let sectionName = "serial"
    let sectionVersion: UInt16 = 1
    var estimatedSize: UInt64 { 7 + 4096 }

    init(_ serial: Serial16550) { self.serial = serial }

    func save() throws(MigrationError) -> [UInt8] { serial.saveState() }

    func load(_ section: StateSection) throws(MigrationError) {
        guard serial.loadState(section.state) else { throw .stream(.malformed("serial state of \(section.state.count) bytes")) }
    }
}

/// Whether the source guest was running (QEMU's "globalstate"): the destination
/// starts its guest only if so.  Section "global".
final class GlobalStateMigratable: MigratableDevice {
    let sectionName = "global"
    let sectionVersion: UInt16 = 1
    let current: @Sendable () -> Bool
    let loaded = Synchronization.Mutex<Bool?>(nil)
    var estimatedSize: UInt64 { 1 }

    /// `wasRunning` is asked at switchover, guest stopped.
    init(wasRunning: @escaping @Sendable () -> Bool) { current = wasRunning }

    func save() throws(MigrationError) -> [UInt8] { [current() ? 1 : 0] }

    func load(_ section: StateSection) throws(MigrationError) {
        guard section.state.count == 1, section.state[0] <= 1 else { throw .stream(.malformed("global state of \(section.state.count) bytes")) }
        loaded.withLock { $0 = section.state[0] == 1 }
    }

    /// What the stream said (destination), `nil` before its section arrived.
    var sourceWasRunning: Bool? { loaded.withLock { $0 } }
}
