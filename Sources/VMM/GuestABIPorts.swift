import Synchronization
import Devices
import EmbeddedGuest
import Foundation
import GuestMemory

/// The embedded guest's two ports: 0x510 reports a heartbeat record's address,
/// 0x511 a fatal exception's vector (GuestABI.swift).
final class GuestABIPorts: PortDevice {
    struct Reference { weak var machine: Machine? }
    let reference = Mutex(Reference())

    func attach(_ machine: Machine) { reference.withLock { $0.machine = machine } }

    func read(port: UInt16, size: Int, count: Int) -> [UInt8] { [UInt8](repeating: 0xff, count: count) }

    /// One 32-bit `out` for the heartbeat's address, any for the panic vector.
    func write(port: UInt16, size: Int, bytes: [UInt8]) {
        guard let machine = reference.withLock({ $0.machine }) else { return }
        switch port {
        case GuestABI.heartbeatPort where bytes.count == 4:
            let address = bytes.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard let record = try? machine.memory.read(at: GuestAddress(address), count: HeartbeatRecord.byteCount),
                  let heartbeat = HeartbeatRecord(bytes: record) else { return }
            let now = ContinuousClock.now
            machine.tracker.state.withLock { $0.record(heartbeat, at: now) }
        case GuestABI.panicPort:
            let vector = bytes.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            machine.tracker.state.withLock { $0.panicVector = vector }
            machine.guestStopped(.guestPanicked, reason: "exception \(vector)")
        default:
            break
        }
    }
}
