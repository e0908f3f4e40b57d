import Devices
import GuestMemory
import Migration
import MigrationProtocol

/// The virtio-balloon and its transport: section "virtio-balloon".
final class BalloonMigratable: MigratableDevice {
    let balloon: VirtioBalloon
    let sectionName = "virtio-balloon"
    let sectionVersion: UInt16 = 1
    /// Transport registers, three queues, the balloon's fields.
    var estimatedSize: UInt64 { 256 }

    init(_ balloon: VirtioBalloon) { self.balloon = balloon }

    func save() throws(MigrationError) -> [UInt8] { balloon.saveState() }

    func load(_ section: StateSection) throws(MigrationError) {
        do { try balloon.loadState(section.state) } catch { throw .stream(.malformed(error.description)) }
    }
}

/// Free page hints from the virtio-balloon for one outgoing migration: the
/// engine's sync notifications become the device's commands, and each hint's
/// guest range becomes RAM-block pages for `RAMMigration.dropFreePages`.
final class BalloonFreePageHints: FreePageHints {
    let balloon: VirtioBalloon
    let memory: GuestMemoryMap

    init(balloon: VirtioBalloon, memory: GuestMemoryMap) {
        self.balloon = balloon
        self.memory = memory
    }

    func willSync() { balloon.stopHinting() }

    func didSync(epoch: UInt64, ram: RAMMigration) {
        let memory = self.memory
        balloon.startHinting(epoch: epoch) { range, epoch in
            guard let (block, offset) = try? memory.locate(range.start, length: range.byteCount),
                  let index = memory.blocks.firstIndex(where: { $0 === block }) else { return 0 }
            // Whole 4 KiB pages only: a partly reported page may hold data.
            let page = RAMMigration.pageSize
            let first = (offset + page - 1) / page, end = (offset + Int(range.byteCount)) / page
            guard first < end else { return 0 }
            return ram.dropFreePages(block: index, pages: first..<end, epoch: epoch)
        }
    }

    func finish() { balloon.finishHinting() }
}
