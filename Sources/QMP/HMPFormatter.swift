/// HMP's text for a QMP result, laid out as QEMU's monitor prints it.  The
/// text is made from the same JSON a QMP client gets, so the two never differ.
public enum HMPFormatter {
    /// The text for one command's outcome.  `cpuIndex` is the monitor's current CPU (`info cpus` marks it).
    public static func text(_ result: Result<JSONValue, QMPError>, as output: HMPOutput, cpuIndex: Int64 = 0) -> String {
        switch result {
        case .failure(let error): return "Error: \(error.desc)\n"
        case .success(let value): return text(value, as: output, cpuIndex: cpuIndex)
        }
    }

    public static func text(_ value: JSONValue, as output: HMPOutput, cpuIndex: Int64 = 0) -> String {
        switch output {
        case .nothing: return ""
        case .balloon: return "balloon: actual=\((int(value["actual"]) ?? 0) >> 20)\n"
        case .migrateAttached: return "terminal does not allow synchronous migration, continuing detached\n"
        case .status:
            let status = string(value["status"]) ?? "unknown"
            if value["running"] == .bool(true) { return "VM status: running\n" }
            return status == "paused" ? "VM status: paused\n" : "VM status: paused (\(status))\n"
        case .cpus:
            guard case .array(let cpus) = value else { return "" }
            return cpus.map { cpu in
                let index = int(cpu["cpu-index"]) ?? 0
                return "\(index == cpuIndex ? "*" : " ") CPU #\(index): thread_id=\(int(cpu["thread-id"]) ?? 0)\n"
            }.joined()
        case .version:
            let qemu = value["qemu"]
            let package = string(value["package"]) ?? ""
            let numbers = [int(qemu?["major"]), int(qemu?["minor"]), int(qemu?["micro"])].map { String($0 ?? 0) }.joined(separator: ".")
            return numbers + (package.isEmpty || package.hasPrefix(" ") ? package : " (\(package))") + "\n"
        case .capabilities:
            guard case .array(let list) = value else { return "" }
            return list.map { "\(string($0["capability"]) ?? "?"): \($0["state"] == .bool(true) ? "on" : "off")\n" }.joined()
        case .parameters:
            guard case .object(let members) = value else { return "" }
            let known = parameterUnits.map { $0.name }
            let names = known.filter { members[$0] != nil } + members.keys.filter { !known.contains($0) }.sorted()
            return names.map { name in
                let unit = parameterUnits.first(where: { $0.name == name })?.unit ?? (name.hasSuffix("-limit") ? " ms" : "")
                return "\(name): \(integerText(members[name]) ?? "?")\(unit)\n"
            }.joined()
        case .migrate:
            return migrate(value)
        }
    }

    /// QEMU's order and units for `info migrate_parameters`.
    static let parameterUnits: [(name: String, unit: String)] = [
        ("throttle-trigger-threshold", ""), ("cpu-throttle-initial", ""), ("cpu-throttle-increment", ""),
        ("max-cpu-throttle", ""), ("max-bandwidth", " bytes/second"), ("avail-switchover-bandwidth", " bytes/second"),
        ("downtime-limit", " ms"), ("x-inactivity-limit", " ms"),
    ]

    /// `info migrate`: status and times, then RAM in kbytes, then where a destination listens.
    static func migrate(_ info: JSONValue) -> String {
        var out = ""
        if let status = string(info["status"]) {
            out += "Migration status: \(status)"
            if status == "failed", let error = string(info["error-desc"]) { out += " (\(error))" }
            out += "\n"
            out += "total time: \(int(info["total-time"]) ?? 0) ms\n"
            if let value = int(info["expected-downtime"]) { out += "expected downtime: \(value) ms\n" }
            if let value = int(info["downtime"]) { out += "downtime: \(value) ms\n" }
            if let value = int(info["setup-time"]) { out += "setup: \(value) ms\n" }
        }
        if let ram = info["ram"] {
            func kbytes(_ key: String) -> Int64 { (int(ram[key]) ?? 0) >> 10 }
            func count(_ key: String) -> Int64 { int(ram[key]) ?? 0 }
            out += "transferred ram: \(kbytes("transferred")) kbytes\n"
            out += "throughput: \(twoDecimals(double(ram["mbps"]) ?? 0)) mbps\n"
            out += "remaining ram: \(kbytes("remaining")) kbytes\n"
            out += "total ram: \(kbytes("total")) kbytes\n"
            out += "duplicate: \(count("duplicate")) pages\n"
            out += "normal: \(count("normal")) pages\n"
            out += "normal bytes: \(kbytes("normal-bytes")) kbytes\n"
            out += "dirty sync count: \(count("dirty-sync-count"))\n"
            out += "page size: \(kbytes("page-size")) kbytes\n"
            out += "multifd bytes: \(kbytes("multifd-bytes")) kbytes\n"
            out += "pages-per-second: \(count("pages-per-second"))\n"
            if count("dirty-pages-rate") != 0 { out += "dirty pages rate: \(count("dirty-pages-rate")) pages\n" }
            if count("precopy-bytes") != 0 { out += "precopy ram: \(kbytes("precopy-bytes")) kbytes\n" }
            if count("downtime-bytes") != 0 { out += "downtime ram: \(kbytes("downtime-bytes")) kbytes\n" }
        }
        if let throttle = int(info["cpu-throttle-percentage"]) { out += "cpu throttle percentage: \(throttle)\n" }
        if case .array(let addresses)? = info["socket-address"] {
            out += "socket address: [\n"
            for address in addresses {
                if string(address["type"]) == "unix" {
                    out += "\tunix:\(string(address["path"]) ?? "")\n"
                } else {
                    out += "\ttcp:\(string(address["host"]) ?? ""):\(string(address["port"]) ?? "")\n"
                }
            }
            out += "]\n"
        }
        return out
    }

    /// `help` / `help NAME`, one line per command as QEMU lists them.
    public static func help(_ topic: String?) -> String {
        let entries = HMPCommand.table.filter { topic == nil || $0.name == topic || $0.alias == topic }
        if entries.isEmpty, let topic { return "unknown command: '\(topic)'\n" }
        return entries.map { entry in
            let name = entry.alias.map { "\(entry.name)|\($0)" } ?? entry.name
            return (entry.arguments.isEmpty ? name : "\(name) \(entry.arguments)") + "  -- \(entry.help)\n"
        }.joined()
    }

    static func string(_ value: JSONValue?) -> String? {
        if case .string(let text)? = value { return text }
        return nil
    }

    static func int(_ value: JSONValue?) -> Int64? {
        if case .int(let number)? = value { return number }
        return nil
    }

    /// An integer of either sign's range, as text (parameters reach 2^64 - 1).
    static func integerText(_ value: JSONValue?) -> String? {
        switch value {
        case .int(let number)?: String(number)
        case .uint(let number)?: String(number)
        default: nil
        }
    }

    static func double(_ value: JSONValue?) -> Double? {
        switch value {
        case .double(let number)?: number
        case .int(let number)?: Double(number)
        default: nil
        }
    }

    /// `%0.2f` without Foundation.
    static func twoDecimals(_ value: Double) -> String {
        let hundredths = Int64((value * 100).rounded())
        let fraction = abs(hundredths % 100)
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}
