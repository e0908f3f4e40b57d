import Migration
import QMP

extension Machine {
    /// `query-migrate`: QEMU's MigrationInfo.  Empty before any migration; on a
    /// destination, the status (and where it listens); on a source, timings and `ram`.
    var queryMigrateJSON: JSONValue {
        // The latest migration: an outgoing one started after the guest arrived wins.
        if let incoming = incomingMigration, outgoingMigration == nil {
            var result: [String: JSONValue] = ["status": .string(incoming.status.withLock { $0 }.rawValue)]
            switch incoming.address {
            case .tcp(let host, let port):
                result["socket-address"] = [["type": "inet", "host": .string(host), "port": .string(String(port))]]
            case .unix(let path):
                result["socket-address"] = [["type": "unix", "path": .string(path)]]
            default: break
            }
            if let error = incoming.error.withLock({ $0 }) { result["error-desc"] = .string(error) }
            // Ferry's own: why a postcopy waits for `migrate-recover` (QEMU's destination says nothing).
            if let reason = incoming.destination.withLock({ $0 })?.pauseReason { result["error-desc"] = .string(reason) }
            // Ferry's own: a lazy restore's progress (the guest runs from the start of it).
            if let lazy = incoming.destination.withLock({ $0 })?.lazyRestoreStatistics {
                var entry: [String: JSONValue] = ["faults": .int(Int64(lazy.faults)), "fault-pages": .int(Int64(lazy.faultPages)),
                                                  "prefetched-pages": .int(Int64(lazy.prefetchedPages)),
                                                  "zero-pages": .int(Int64(lazy.zeroPages)),
                                                  "loaded-units": .int(Int64(lazy.loadedUnits)), "total-units": .int(Int64(lazy.totalUnits)),
                                                  "complete": .bool(lazy.complete)]
                if let time = lazy.loadTime {
                    entry["load-time"] = .int(time.components.seconds * 1000 + time.components.attoseconds / 1_000_000_000_000_000)
                }
                if let latency = lazy.faultLatency { entry["fault-latency-us"] = Self.json(latency) }
                result["x-ferry-lazy-restore"] = .object(entry)
            }
            // Ferry's own: what the guest waited for since the switch to postcopy.
            if let postcopy = incoming.destination.withLock({ $0 })?.postcopyStatistics {
                var entry: [String: JSONValue] = ["faults": .int(Int64(postcopy.faults)), "requests": .int(Int64(postcopy.requests)),
                                                  "zero-filled": .int(Int64(postcopy.zeroFilled)),
                                                  "placed-pages": .int(Int64(postcopy.placedPages)),
                                                  "zero-left-pages": .int(Int64(postcopy.zeroLeft)),
                                                  "pauses": .int(Int64(postcopy.pauses))]
                if let latency = postcopy.latency { entry["request-latency-us"] = Self.json(latency) }
                result["x-ferry-postcopy"] = .object(entry)
                // QEMU's (capability postcopy-blocktime; the latencies are QEMU 10.1's), QEMU's units.
                // QEMU shows them once the migration completed; Ferry from the switch on.
                if let blocktime = postcopy.blocktime {
                    result["postcopy-blocktime"] = .int(Int64(blocktime.blocktime))
                    result["postcopy-vcpu-blocktime"] = .array(blocktime.vcpuBlocktime.map { .int(Int64($0)) })
                    result["postcopy-latency"] = .int(Int64(clamping: blocktime.latency))
                    result["postcopy-latency-dist"] = .array(blocktime.latencyDistribution.map { .int(Int64(clamping: $0)) })
                    result["postcopy-vcpu-latency"] = .array(blocktime.vcpuLatency.map { .int(Int64(clamping: $0)) })
                    result["postcopy-non-vcpu-latency"] = .int(Int64(clamping: blocktime.nonVCPULatency))
                }
            }
            return .object(result)
        }
        guard let info = outgoingMigration else { return .object([:]) }
        var result: [String: JSONValue] = ["status": .string(info.status.rawValue)]
        guard info.status != .setup else { return .object(result) }
        result["total-time"] = .int(Int64(info.totalTime))
        result["setup-time"] = .int(Int64(info.setupTime))
        if let downtime = info.downtime { result["downtime"] = .int(Int64(downtime)) }
        if let expected = info.expectedDowntime, !info.status.isFinished { result["expected-downtime"] = .int(Int64(expected)) }
        if let throttle = info.cpuThrottlePercentage { result["cpu-throttle-percentage"] = .int(Int64(throttle)) }
        if let error = info.errorDescription { result["error-desc"] = .string(error) }
        let ram = info.ram
        // While running, the last window's rate; once finished, the average, as QEMU reports.
        let mbps = info.status.isFinished
            ? (info.totalTime > 0 ? Double(info.transferredBytes) * 8 / Double(info.totalTime) / 1000 : 0)
            : info.bandwidth * 8 / 1_000_000
        result["ram"] = [
            "transferred": .int(Int64(info.transferredBytes)),
            "remaining": .int(Int64(ram.remainingPages * ram.pageSize)),
            "total": .int(Int64(ram.totalBytes)),
            "duplicate": .int(Int64(ram.zeroPages)),
            "normal": .int(Int64(ram.normalPages)),
            "normal-bytes": .int(Int64(ram.normalPages * ram.pageSize)),
            "dirty-sync-count": .int(Int64(ram.dirtySyncCount)),
            "dirty-pages-rate": .int(Int64(ram.dirtyPagesRate)),
            "mbps": .double(mbps),
            "pages-per-second": .int(Int64(info.pagesPerSecond)),
            "page-size": .int(Int64(ram.pageSize)),
            "precopy-bytes": .int(Int64(info.transferredBytes - info.downtimeBytes)),
            "downtime-bytes": .int(Int64(info.downtimeBytes)),
            "postcopy-bytes": .int(Int64(info.postcopyBytes)),
            "multifd-bytes": .int(Int64(info.multifdBytes)),
            "postcopy-requests": .int(Int64(info.postcopyRequests)),
            "dirty-sync-missed-zero-copy": .int(Int64(ram.dirtySyncMissedZeroCopy)),
        ]
        // Ferry's own: what each channel carried (main, then multifd 0..N-1).
        // Ferry's own: what the balloon's free page hints kept out of the stream.
        if let balloon, balloon.freePageHint {
            let counters = balloon.counters
            result["x-ferry-free-page-hints"] = ["skipped-pages": .int(Int64(ram.freePageHintPages)),
                                                 "skipped-bytes": .int(Int64(ram.freePageHintPages * ram.pageSize)),
                                                 "reported-pages": .int(Int64(counters.reportedPages)),
                                                 "ignored-pages": .int(Int64(counters.ignoredPages))]
        }
        result["x-ferry-channels"] = .array(info.channels.map { channel in
            var entry: [String: JSONValue] = ["role": .string(channel.role.description), "bytes": .int(Int64(channel.bytes)),
                                              "frames": .int(Int64(channel.frames))]
            if channel.role == .multifd {
                entry["index"] = .int(Int64(channel.index))
                entry["normal"] = .int(Int64(channel.normalPages))
                entry["duplicate"] = .int(Int64(channel.zeroPages))
            }
            return .object(entry)
        })
        // Ferry's own: how postcopy's requests were served.
        if info.status.isPostcopy || info.postcopyBytes > 0 {
            result["x-ferry-postcopy"] = ["requests": .int(Int64(info.postcopyRequests)),
                                          "dropped-requests": .int(Int64(info.postcopyDroppedRequests)),
                                          "urgent-pages": .int(Int64(info.postcopyUrgentPages)),
                                          "resent-pages": .int(Int64(info.postcopyResentPages)),
                                          "pauses": .int(Int64(info.postcopyPauses)),
                                          "pacing": .int(Int64(clamping: info.postcopyPacing)),
                                          "pacing-lowest": .int(Int64(clamping: info.postcopyPacingLowest)),
                                          "pacing-now": .int(Int64(clamping: info.postcopyPacingNow)),
                                          "yields": .int(Int64(clamping: info.postcopyYields))]
        }
        // Ferry's own: what a completed mapped-ram save wrote.
        if let saved = info.mappedRAM {
            result["x-ferry-mapped-ram"] = ["generation": .int(Int64(saved.baseline.generation)), "incremental": .bool(saved.incremental),
                                            "present-pages": .int(Int64(saved.presentPages))]
        }
        // Ferry's own: a background snapshot's write faults, pages and limiter.
        if let snapshot = info.snapshot {
            var entry: [String: JSONValue] = [
                "limiter": .string(snapshot.limiter.rawValue), "write-faults": .int(Int64(snapshot.writeFaults)),
                "faulted-units": .int(Int64(snapshot.faultedUnits)), "faulted-pages": .int(Int64(snapshot.faultedPages)),
                "scanned-pages": .int(Int64(snapshot.scannedPages)), "fault-only-runs": .int(Int64(snapshot.faultOnlyRuns)),
                "throttling": .bool(snapshot.throttling),
            ]
            if let latency = snapshot.faultLatency { entry["fault-latency-us"] = Self.json(latency) }
            if let rate = snapshot.scanRateLimit { entry["scan-rate-limit"] = .int(Int64(rate)) }
            result["x-ferry-background-snapshot"] = .object(entry)
        }
        return .object(result)
    }

    static func json(_ latency: LatencySummary) -> JSONValue {
        ["p50": .int(Int64(latency.p50)), "p99": .int(Int64(latency.p99)), "max": .int(Int64(latency.max)), "mean": .double(latency.mean)]
    }

    /// `query-migrate-parameters`: the values Ferry honours, QEMU's names.
    var migrationParametersJSON: JSONValue {
        var result: [String: JSONValue] = [:]
        let parameters = migrationParameters
        for (name, value) in parameters.values { result[name] = .unsigned(value) }
        for (name, value) in parameters.textValues { result[name] = .string(value) }
        for (name, value) in parameters.booleanValues { result[name] = .bool(value) }
        return .object(result)
    }
}
