import ArgumentParser
import EmbeddedGuest
import Foundation
import GuestMemory
import QMP
import VMM

/// The options that describe a VM, shared by `run` and `demo`.
struct MachineOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .long], help: "Guest RAM, with K, M or G suffix (e.g. 1G, 512M).")
    var memory: String = "1G"

    @Option(name: .customLong("memory-backend"), help: "What backs guest RAM: anon, memfd or hugetlb (2 MiB pages reserved in /proc/sys/vm/nr_hugepages).")
    var memoryBackend: String = "anon"

    @Flag(name: [.customLong("mem-prealloc"), .customLong("mem-prealloc", withSingleDash: true)],
          help: "Allocate all guest RAM at start (as QEMU's -mem-prealloc): no page faults later, e.g. while a migration arrives.")
    var memPrealloc = false

    @Option(help: "Number of vCPUs (1-32).")
    var cpus: Int = 1

    @Option(help: ArgumentHelp("What the embedded guest does: 'idle' (touch its memory once, then only beat) or 'dirty-rate=RATE[,working-set=SIZE][,access=random][,free=SIZE][,churn=SIZE]' with RATE in bytes per second or 'max', e.g. dirty-rate=512M,working-set=1G; access=random also reads a random page after each page written; free=SIZE gives the last SIZE of the working set back to the guest's page allocator after the first pass; churn=SIZE keeps allocating, writing, verifying and freeing SIZE of memory in 4 MiB blocks.", valueName: "spec"))
    var workload: String = "idle"

    @Option(name: [.customLong("device"), .customLong("device", withSingleDash: true)],
            help: ArgumentHelp("Add a device, as QEMU's -device: 'virtio-balloon[,free-page-hint=on]' (a virtio-mmio balloon; with free-page-hint=on the guest's free pages stay out of a migration).", valueName: "spec"))
    var device: [String] = []

    @Option(help: "Boot this PVH ELF kernel instead of the embedded guest.")
    var kernel: String?

    @Option(help: "Kernel command line (with --kernel).")
    var append: String = ""

    @Option(help: "Initial ramdisk handed to the kernel as PVH module 0 (with --kernel).")
    var initrd: String?

    func configuration() throws -> MachineConfiguration {
        guard let bytes = ByteSize.parse(memory) else {
            throw FerryFailure.badInput("invalid memory size '\(memory)' (expected a number with optional K, M or G suffix)")
        }
        guard let backend = MemoryBackend(rawValue: memoryBackend) else {
            throw FerryFailure.badInput("unknown memory backend '\(memoryBackend)' (expected anon, memfd or hugetlb)")
        }
        let boot: MachineConfiguration.Boot
        if let kernel {
            let image = try readInput(kernel, what: "kernel")
            let initrdBytes = try initrd.map { try readInput($0, what: "initrd") }
            boot = .kernel(image: image, commandLine: append, initrd: initrdBytes)
        } else {
            guard initrd == nil, append.isEmpty else { throw FerryFailure.badInput("--append and --initrd need --kernel") }
            do { boot = .embedded(try WorkloadSpec(parsing: workload)) } catch {
                throw FerryFailure.badInput("invalid --workload: \(error)")
            }
        }
        var configuration = MachineConfiguration(memoryBytes: bytes, backend: backend, cpus: cpus, boot: boot)
        configuration.preallocate = memPrealloc
        do { configuration.devices = try device.map { try DeviceSpec(parsing: $0) } } catch {
            throw FerryFailure.badInput("invalid --device: \(error)")
        }
        do { try configuration.validate() } catch { throw FerryFailure.badInput(error.description) }
        return configuration
    }

    private func readInput(_ path: String, what: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FerryFailure.badInput("cannot read \(what) file '\(path)'")
        }
        return [UInt8](data)
    }
}

/// Builds a machine, mapping its errors to exit statuses: configuration and
/// boot-image problems are bad input (2), the rest runtime failures (1).
func makeMachine(_ configuration: MachineConfiguration, incoming: Bool = false, serialOutput: @escaping @Sendable ([UInt8]) -> Void,
                 events: @escaping @Sendable (QMPEvent) -> Void = { _ in }) throws -> Machine {
    do {
        return try Machine(configuration, incoming: incoming, serialOutput: serialOutput, events: events)
    } catch {
        switch error {
        case .kvm, .invalidState: throw FerryFailure.runtime(error.description)
        case .memory(.mapFailed): throw FerryFailure.runtime(error.description)
        default: throw FerryFailure.badInput(error.description)
        }
    }
}
