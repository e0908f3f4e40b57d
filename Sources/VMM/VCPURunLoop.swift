import Devices
import Foundation
import EmbeddedGuest
import GuestMemory
import KVM

/// The loop one vCPU thread runs: park while paused, KVM_RUN, dispatch the exit.
struct VCPURunLoop {
    let machine: Machine
    let vcpu: VirtualCPU

    func run() {
        vcpu.bindToCurrentThread()
        defer { machine.control.threadExited() }
        while machine.control.shouldRun() {
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch {
                machine.guestStopped(.internalError, reason: "\(error)")
                continue
            }
            handle(exit)
        }
    }

    func handle(_ exit: VCPUExit) {
        switch exit {
        case .ioOut(let port, _, let data):
            portWrite(port, data)
        case .ioIn(let port, let size, let count):
            vcpu.completeIORead(portRead(port, byteCount: size * count))
        case .mmioRead(_, let length):
            vcpu.completeMMIORead([UInt8](repeating: 0xff, count: length))
        case .interrupted:
            // Auto-converge: a throttled vCPU sleeps its share of each timeslice.
            if let sleep = machine.control.throttleSleep { machine.control.sleepThrottled(for: sleep) }
        case .mmioWrite, .halt:
            break
        case .shutdown:
            machine.guestStopped(.shutdown, reason: "guest-reset")
        case .systemEvent(let type):
            machine.guestStopped(.shutdown, reason: type == 1 ? "guest-shutdown" : "guest-reset")
        case .failEntry(let reason):
            machine.guestStopped(.internalError, reason: "KVM entry failed (hardware reason 0x\(String(reason, radix: 16)))")
        case .internalError(let suberror):
            machine.guestStopped(.internalError, reason: "KVM internal error (suberror \(suberror))")
        case .unknown(let reason):
            machine.guestStopped(.internalError, reason: "unexpected KVM exit \(reason)")
        }
    }

    func portWrite(_ port: UInt16, _ data: [UInt8]) {
        if machine.serial.handles(port: port) {
            machine.serial.write(port: port, bytes: data)
            return
        }
        switch port {
        case GuestABI.heartbeatPort where data.count == 4:
            let address = data.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard let bytes = try? machine.memory.read(at: GuestAddress(address), count: HeartbeatRecord.byteCount),
                  let record = HeartbeatRecord(bytes: bytes) else { return }
            let now = ContinuousClock.now
            machine.tracker.state.withLock { $0.record(record, at: now) }
        case GuestABI.panicPort:
            let vector = data.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            machine.tracker.state.withLock { $0.panicVector = vector }
            machine.guestStopped(.guestPanicked, reason: "exception \(vector) on \(vcpu.index)")
        default:
            break       // writes to absent devices are dropped, as on real hardware
        }
    }

    func portRead(_ port: UInt16, byteCount: Int) -> [UInt8] {
        if machine.serial.handles(port: port) {
            return (0..<byteCount).map { _ in machine.serial.read(port: port) }
        }
        return [UInt8](repeating: 0xff, count: byteCount)   // absent device: the bus floats high
    }
}
