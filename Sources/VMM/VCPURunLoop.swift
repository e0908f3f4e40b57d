import Devices
import Foundation
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
        case .ioOut(let port, let size, let data):
            machine.bus.portWrite(port, size: size, bytes: data)
        case .ioIn(let port, let size, let count):
            vcpu.completeIORead(machine.bus.portRead(port, size: size, count: size * count))
        case .mmioRead(let address, let length):
            vcpu.completeMMIORead(machine.bus.mmioRead(address: address, count: length))
        case .mmioWrite(let address, let data):
            machine.bus.mmioWrite(address: address, bytes: data)
        case .interrupted:
            // Auto-converge: a throttled vCPU sleeps its share of each timeslice.
            if let sleep = machine.control.throttleSleep { machine.control.sleepThrottled(for: sleep) }
        case .halt:
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
}
