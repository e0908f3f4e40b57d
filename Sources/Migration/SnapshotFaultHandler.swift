import Foundation
import GuestMemory
import Histogram
import Synchronization

/// A background snapshot's write-fault thread.  For each write held on a
/// protected unit it claims the unit, copies it out, releases it (the guest's
/// write goes ahead at once) and queues the copy for the writer; the copy
/// reaches the stream or the disk later.  A unit the scan holds is left to
/// the scan, whose release wakes the writer.
///
/// Every fault's latency (from reading it to releasing its unit) goes into a
/// histogram for `query-migrate` and to the writer's scan limiter.
final class SnapshotFaultHandler: Sendable {
    let protection: any WriteProtection
    let mappings: [HostMapping]
    /// Which units are saved: shared with the writer's scan.
    let pages: Mutex<SnapshotPageMap>
    let copies: FaultCopies
    let stopping = Atomic<Bool>(false)
    let thread = Mutex<JoinableThread?>(nil)

    struct Record {
        /// Microseconds from reading each claimed fault to releasing its unit.
        var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        /// Latencies since the writer last took them (for the limiter).
        var fresh: [Duration] = []
        /// Faults read: claimed here, left to the scan, or already done.
        var faults: UInt64 = 0
        var claimed: UInt64 = 0
        var failure: MigrationError?
    }
    let record = Mutex(Record())

    init(protection: any WriteProtection, mappings: [HostMapping], copies: FaultCopies, pages: SnapshotPageMap) {
        self.protection = protection
        self.mappings = mappings
        self.pages = Mutex(pages)
        self.copies = copies
    }

    func start() {
        let started = JoinableThread(name: "ferry-wp-fault") { [self] in run() }
        thread.withLock { $0 = started }
    }

    /// Stops the thread and waits for it (a wait for room in the queue is abandoned).
    func stop() {
        stopping.store(true, ordering: .releasing)
        protection.interrupt()
        copies.abort()
        thread.withLock { $0 }?.join()
    }

    /// The failure that ended the thread, if any.
    var failure: MigrationError? { record.withLock { $0.failure } }

    /// Fault latencies since the last call.
    func takeLatencies() -> [Duration] {
        record.withLock { r in
            defer { r.fresh.removeAll(keepingCapacity: true) }
            return r.fresh
        }
    }

    private func run() {
        do throws(MigrationError) {
            while !stopping.load(ordering: .acquiring) {
                let faults = try protection.waitForFaults(timeout: .milliseconds(100))
                let read = ContinuousClock.now
                for fault in faults {
                    try handle(fault, readAt: read)
                    if stopping.load(ordering: .acquiring) { return }
                }
            }
        } catch {
            record.withLock { $0.failure = error }
        }
    }

    private func handle(_ fault: WriteFault, readAt read: ContinuousClock.Instant) throws(MigrationError) {
        let (claim, unitBytes) = pages.withLock { map in (map.claimFault(block: fault.block, offset: fault.offset), map.unitBytes[fault.block]) }
        let offset = fault.offset / unitBytes * unitBytes
        record.withLock { $0.faults += 1 }
        switch claim {
        case .inFlight:
            return      // the scan writes it from protected RAM and then releases it
        case .done:
            // Released already; the write was held before that and is woken by now,
            // but a wake costs nothing and rules out a lost one.
            try protection.release(block: fault.block, offset: offset, length: unitBytes)
            return
        case .claimed:
            break
        }
        guard copies.reserve(unitBytes) else { return }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(unitBytes)
        let page = PageSize.base.byteCount
        for at in stride(from: offset, to: offset + unitBytes, by: page) { mappings[fault.block].appendPage(at: at, to: &bytes) }
        try protection.release(block: fault.block, offset: offset, length: unitBytes)
        let latency = ContinuousClock.now - read
        copies.push(FaultCopy(block: fault.block, offset: offset, bytes: bytes))
        pages.withLock { $0.finish(block: fault.block, unit: offset / unitBytes) }
        let micros = UInt64(max(1, latency.components.seconds * 1_000_000 + latency.components.attoseconds / 1_000_000_000_000))
        record.withLock { r in
            r.claimed += 1
            _ = r.histogram.record(micros)
            r.fresh.append(latency)
        }
    }
}
