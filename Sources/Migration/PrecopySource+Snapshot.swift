import GuestMemory
import Histogram
import MigrationProtocol
import Synchronization

/// QEMU's `background-snapshot`: the VM saved as it was when the snapshot
/// started, while the guest runs on.
///
///     setup ──▶ stop: device state captured, RAM write-protected ──▶ resume
///           ──▶ active: faulted copies first, else the linear scan
///           ──▶ device state (as captured) ──▶ end ──▶ completed, guest still running
///
/// The stream is an ordinary Ferry stream (each page once, then the device
/// sections captured at the start), so a snapshot restores with
/// `--incoming file:` like any migration.  Dirty logging stays off.
/// Failure or cancellation lifts every protection; the guest runs on.
extension PrecopySource {
    /// The snapshot's part of `run`, once the stream has its header and configuration.
    /// `stoppedGuest` is set while the guest is stopped at the start.
    func runBackgroundSnapshot(stoppedGuest: inout Bool?) throws(MigrationError) {
        guard let protection = parts.writeProtection else { throw .invalidState("background-snapshot needs write protection") }
        let ram = parts.ram
        let settings = parameters.snapshotLimiter
        let copies = FaultCopies(capacity: Self.faultCopyCapacity)
        let handler = SnapshotFaultHandler(protection: protection, mappings: ram.mappings, copies: copies,
                                           pages: SnapshotPageMap(blockBytes: ram.mappings.map(\.byteCount), unitBytes: protection.unitBytes))
        snapshot.withLock { $0 = SnapshotProgress(handler: handler, mode: settings.mode) }
        // Into a mapped-ram file (Ferry's own): the pages go to their places, written by
        // multifd's threads; the stream here is the device state.
        let file = saver.withLock { $0 }
        if let file {
            try writer.send(.channels, payload: ChannelPlan(multifd: UInt16(file.barrier.parties), mappedRAM: true).encode())
            startFileWorkers(file, parameters)
        } else {
            try writer.send(.channels, payload: ChannelPlan(multifd: 0).encode())
        }
        for device in parts.devices { try device.setup() }
        progress.withLock { $0.info.setupTime = Self.milliseconds(.now - $0.startedAt) }
        try checkCancelled()

        // The start: stop, capture the devices, protect all RAM, resume.
        let stopRequested = ContinuousClock.now
        let wasRunning = parts.vm.stopForSwitchover()
        stoppedGuest = wasRunning
        var sections: [[UInt8]] = []
        for device in parts.devices {
            guard let whole = device as? any MigratableDevice else {
                throw .invalidState("section '\(device.sectionName)' cannot be captured at the snapshot's start")
            }
            sections.append(StateSection(name: whole.sectionName, version: whole.sectionVersion, state: try whole.save()).encode())
        }
        let resident = ram.residentChunks()
        if file == nil { try writer.send(.residency, payload: RAMResidency(words: resident.map(\.words)).encode()) }
        var protectedRAM = false
        defer {
            // After any outcome: the thread stops, every write goes ahead.
            handler.stop()
            if protectedRAM {
                do { try protection.releaseAll() } catch {
                    progress.withLock { $0.cleanupFailure = "cannot lift write protection: \(error)" }
                }
            }
        }
        protectedRAM = true
        try protection.protectAll()
        handler.start()
        parts.vm.resumeAfterFailedSwitchover(wasRunning: wasRunning)     // back to the state before the stop
        stoppedGuest = nil
        progress.withLock { $0.info.downtime = Self.milliseconds(.now - stopRequested) }
        setStatus(.active)

        try saveAllPages(ram: ram, resident: resident, copies: copies, handler: handler, settings: settings, file: file)
        try ram.multifd?.finish()
        writer.setRateLimit(0)
        for section in sections { try writer.send(.section, payload: section) }
        try progress.withLock { p throws(MigrationError) in
            if p.cancelRequested { throw .cancelled }
            p.phase = p.phase.next(.switchingOver).next(.sendingEnd)
        }
        try writer.sendEnd()
        if let file {
            try file.finish(stateLength: writer.bytesWritten)
            let identity: FileIdentity
            do { identity = try file.file.identity } catch { throw .channel(error) }
            let outcome = MappedRAMOutcome(baseline: MappedRAMBaseline(file: identity, generation: file.generation),
                                           incremental: false, presentPages: file.presentPages)
            progress.withLock { $0.mappedRAM = outcome }
        }
        progress.withLock { $0.phase = $0.phase.next(.pastPointOfNoReturn) }
        if channel.hasReturnPath { try awaitDestination() }
    }

    /// Copies the fault handler queued go out first; otherwise the scan takes
    /// the next unclaimed units, writes them from protected RAM and releases them.
    private func saveAllPages(ram: RAMMigration, resident: [DirtyBitmap], copies: FaultCopies, handler: SnapshotFaultHandler,
                              settings: SnapshotLimiterSettings, file: MappedRAMSaver?) throws(MigrationError) {
        var limiter = ScanLimiter(settings, now: .now)
        var sender = PageSender(writer: writer, mappings: ram.mappings, detection: .multifd, statistics: ram.statistics)
        let chunkPages = RAMMigration.chunkBytes / RAMMigration.pageSize
        let pageSize = RAMMigration.pageSize
        let unitBytes = parts.writeProtection!.unitBytes
        while true {
            try checkCancelled()
            if let failure = handler.failure { throw failure }
            // A writer that failed drops its queue: those units are never finished (nor
            // released), and once every unit is claimed nothing else would say so.
            if let failure = ram.multifd?.failure { throw failure }
            for latency in handler.takeLatencies() { limiter.faultResolved(latency: latency) }
            // Faulted copies first: the guest has moved on, but they hold the queue's room.
            let faulted = copies.take(maxBytes: RAMMigration.jobPages * pageSize)
            if !faulted.isEmpty {
                let pages: Int
                if let file {
                    pages = try writeCopies(faulted, into: file, statistics: ram.statistics)
                } else {
                    pages = try sendCopies(faulted, statistics: ram.statistics)
                }
                copies.written(faulted.reduce(0) { $0 + $1.bytes.count })
                limiter.faultedPagesWritten(pages)
                snapshot.withLock { $0?.faultedPages += UInt64(pages) }
                writer.waitForBudget()
                continue
            }
            let (complete, remaining, remainingBytes) = handler.pages.withLock { ($0.isComplete, $0.unclaimedCount, $0.unclaimedBytes) }
            ram.statistics.withLock { $0.remainingPages = UInt64(remainingBytes / pageSize) }
            if complete && copies.isEmpty { return }
            guard remaining > 0, limiter.mayScan(now: .now) else {
                // Fault-only (or everything claimed, the last copies on their way): wait for a fault's copy.
                if !copies.waitForCopies(timeout: limiter.pollTimeout) { limiter.pollTimedOut() }
                snapshot.withLock { $0?.limiter = limiter.snapshotState }
                continue
            }
            guard let run = handler.pages.withLock({ $0.claimScan(maxBytes: RAMMigration.jobPages * pageSize) }) else { continue }
            let first = run.unit * unitBytes[run.block], bytes = run.count * unitBytes[run.block]
            if let multifd = ram.multifd {
                // A file's writer thread writes the run, then lifts its protection.
                var job = PageJob()
                for offset in stride(from: first, to: first + bytes, by: pageSize) {
                    job.append(block: run.block, offset: offset, zero: !resident[run.block][offset / pageSize / chunkPages])
                }
                let protection = parts.writeProtection!
                job.onWritten = {
                    do throws(MigrationError) {
                        try protection.release(block: run.block, offset: first, length: bytes)
                        handler.pages.withLock { $0.finish(block: run.block, unit: run.unit, count: run.count) }
                    } catch { handler.record.withLock { $0.failure = $0.failure ?? error } }
                }
                try multifd.send(job)
                limiter.scanned(bytes: bytes)
                snapshot.withLock { s in
                    s?.scannedPages += UInt64(bytes / pageSize)
                    s?.limiter = limiter.snapshotState
                }
                continue
            }
            // Every 4 KiB page of the run, in frames of at most `jobPages`.
            var job = PageJob()
            for offset in stride(from: first, to: first + bytes, by: pageSize) {
                let page = offset / pageSize
                job.append(block: run.block, offset: offset, zero: !resident[run.block][page / chunkPages])
                if job.count == RAMMigration.jobPages {
                    try sender.send(job)
                    job = PageJob()
                }
            }
            try sender.send(job)
            try parts.writeProtection!.release(block: run.block, offset: first, length: bytes)
            handler.pages.withLock { $0.finish(block: run.block, unit: run.unit, count: run.count) }
            limiter.scanned(bytes: bytes)
            snapshot.withLock { s in
                s?.scannedPages += UInt64(bytes / pageSize)
                s?.limiter = limiter.snapshotState
            }
            writer.waitForBudget()
        }
    }

    /// Writes fault copies into a mapped-ram file at their pages' places; returns the 4 KiB pages written.
    private func writeCopies(_ faulted: [FaultCopy], into file: MappedRAMSaver, statistics: RAMCounters) throws(MigrationError) -> Int {
        var (data, zero) = (0, 0)
        for copy in faulted {
            let (d, z) = try file.writeCopy(block: copy.block, offset: copy.offset, bytes: copy.bytes)
            (data, zero) = (data + d, zero + z)
        }
        limiter.charge(data * RAMMigration.pageSize)
        statistics.withLock { s in
            s.normalPages += UInt64(data)
            s.zeroPages += UInt64(zero)
        }
        return data + zero
    }

    /// Writes fault copies as `pages` frames (zero pages as zero records); returns the 4 KiB pages written.
    private func sendCopies(_ faulted: [FaultCopy], statistics: RAMCounters) throws(MigrationError) -> Int {
        let pageSize = RAMMigration.pageSize
        var index = PageIndexBuilder()
        var list = GatherList()
        var tail: [UInt8] = []
        var (records, data, zero, total) = (0, 0, 0, 0)
        func flush() throws(MigrationError) {
            guard records > 0 else { return }
            list.removeAll()
            list.append(writer.pagesFrameHead(index: index.payload(), tailLength: tail.count))
            list.append(tail)
            try writer.write(list)
            index.reset()
            tail.removeAll(keepingCapacity: true)
            records = 0
        }
        for copy in faulted {
            for start in stride(from: 0, to: copy.bytes.count, by: pageSize) {
                let scan = PageScan.of(copy.bytes.span.extracting(start..<start + pageSize))
                let offset = UInt64(copy.offset + start)
                if scan.isZero {
                    index.append(block: copy.block, offset: offset, kind: .zero)
                    zero += 1
                } else {
                    index.append(block: copy.block, offset: offset, kind: .data, checksum: scan.checksum)
                    tail.append(contentsOf: copy.bytes[start..<start + pageSize])
                    data += 1
                }
                records += 1
                total += 1
                if records == RAMMigration.jobPages { try flush() }
            }
        }
        try flush()
        statistics.withLock { s in
            s.normalPages += UInt64(data)
            s.zeroPages += UInt64(zero)
        }
        return total
    }

    /// Bytes of fault copies that may wait for the writer (then faults wait for room).
    static let faultCopyCapacity = 64 << 20
}

/// A running background snapshot's figures, for `query-migrate`.
struct SnapshotProgress: Sendable {
    let handler: SnapshotFaultHandler
    let mode: SnapshotLimiterMode
    var faultedPages: UInt64 = 0
    var scannedPages: UInt64 = 0
    var limiter = ScanLimiter.Snapshot()

    var statistics: SnapshotStatistics {
        let (histogram, faults, claimed) = handler.record.withLock { ($0.histogram, $0.faults, $0.claimed) }
        var s = SnapshotStatistics(limiter: mode)
        s.writeFaults = faults
        s.faultedUnits = claimed
        s.faultedPages = faultedPages
        s.scannedPages = scannedPages
        s.faultLatency = LatencySummary(histogram)
        s.faultOnlyRuns = limiter.faultOnlyRuns
        s.scanRateLimit = limiter.scanRate.map { UInt64($0) }
        s.throttling = limiter.throttling
        return s
    }
}

/// Ferry's `x-ferry-background-snapshot` in `query-migrate`.
public struct SnapshotStatistics: Equatable, Sendable {
    public var limiter: SnapshotLimiterMode
    /// Write faults read (each first write to a protected unit, and repeats while the scan held it).
    public var writeFaults: UInt64 = 0
    /// Units the fault handler copied and released.
    public var faultedUnits: UInt64 = 0
    /// 4 KiB pages written from fault copies, and by the scan.
    public var faultedPages: UInt64 = 0
    public var scannedPages: UInt64 = 0
    /// Microseconds from reading a write fault to releasing its page.
    public var faultLatency: LatencySummary?
    /// Seed mode: fault-only runs started.
    public var faultOnlyRuns = 0
    /// Latency mode: the scan's current limit in bytes per second, nil when unlimited.
    public var scanRateLimit: UInt64?
    /// Whether the limiter holds the scan back now.
    public var throttling = false

    public init(limiter: SnapshotLimiterMode) { self.limiter = limiter }
}
