import Foundation

/// Ferry's built-in test guest: a PVH ELF kernel the ferry binary carries.
///
/// Source: guest/embedded/ (entry.S runs ring 0, workload.c runs in ring 3);
/// guest/embedded/build.sh regenerates `EmbeddedGuestImage.swift`.
public enum EmbeddedGuest {
    /// The guest as a PVH ELF file, the same bytes `ferry guest export` writes.
    public static let elfImage: [UInt8] = {
        let text = embeddedGuestImageBase64.filter { !$0.isWhitespace }
        guard let data = Data(base64Encoded: text) else { preconditionFailure("embedded guest image is corrupt") }
        return [UInt8](data)
    }()

    /// The kernel command line that runs `workload` on `cpus` vCPUs with the given TSC frequency.
    public static func commandLine(workload: WorkloadSpec, cpus: Int, tscKHz: UInt32) -> String {
        var line = "cpus=\(cpus) tsc-khz=\(tscKHz)"
        switch workload.dirtyRate {
        case .idle: line += " dirty-rate=0"
        case .max: line += " dirty-rate=max"
        case .bytesPerSecond(let rate): line += " dirty-rate=\(rate)"
        }
        if let workingSet = workload.workingSet { line += " working-set=\(workingSet)" }
        if workload.randomAccess { line += " access=random" }
        if let free = workload.free { line += " free=\(free)" }
        if let churn = workload.churn { line += " churn=\(churn)" }
        return line
    }
}
