import Analysis

/// `ferry analyze`'s human-readable report, one fact a line.
struct AnalysisText {
    let analysis: FileAnalysis

    init(_ analysis: FileAnalysis) { self.analysis = analysis }

    var lines: [String] {
        var out: [String] = []
        let at = analysis.offset > 0 ? " (from offset \(analysis.offset))" : ""
        let kind = switch analysis.kind {
        case .stream: "Ferry migration stream"
        case .mappedRAM: "Ferry mapped-ram file"
        case .unknown: "not a Ferry migration file"
        }
        let allocated = analysis.kind == .mappedRAM ? nil : analysis.allocatedBytes     // a mapped-ram file's size line has it
        out.append("\(analysis.path ?? "file")\(at): \(kind), \(Self.size(analysis.fileBytes))"
                   + (allocated.map { ", \(Self.size($0)) allocated" } ?? ""))
        if let file = analysis.mappedRAM { out += mappedRAM(file) }
        if let stream = analysis.stream { out += Self.stream(stream, indent: "  ") }
        switch analysis.status {
        case .ok: out.append("result: ok")
        case .corrupt: out.append("result: corrupt (\(analysis.corruptionCount) corrupt page(s) or frame(s))")
        case .error: out.append("result: error: \(analysis.error ?? "")")
        }
        return out
    }

    func mappedRAM(_ file: MappedRAMAnalysis) -> [String] {
        var out = ["  header: version \(file.version), \(file.complete ? "complete" : "INCOMPLETE"), generation \(file.generation), "
                   + "\(file.pageSize)-byte pages, \(file.headerBytes) bytes",
                   "  size: RAM \(Self.size(file.ramBytes)), layout \(Self.size(file.layoutBytes)), file \(Self.size(analysis.fileBytes)): "
                   + (file.bounded ? "bounded" : "LONGER THAN ITS LAYOUT")
                   + (analysis.allocatedBytes.map { ", \(Self.size($0)) allocated" + ($0 < analysis.fileBytes ? " (sparse)" : "") } ?? "")]
        for block in file.blocks {
            out.append("  block \(block.name): \(Self.size(block.bytes)), \(block.pages) pages of \(block.pageSize) bytes; "
                       + "bitmap at \(block.bitmapOffset), checksums at \(block.checksumsOffset), pages at \(block.pagesOffset)")
            var facts: [String] = []
            if let present = block.present, let zero = block.zero { facts.append("\(present) present, \(zero) zero (absent)") }
            if let ok = block.metadataOK { facts.append(ok ? "metadata checksum ok" : "METADATA CORRUPT") }
            if file.pagesChecked { facts.append("\(block.checkedPages) pages checked, \(block.corruptPageCount) corrupt") }
            if !facts.isEmpty { out.append("    " + facts.joined(separator: "; ")) }
        }
        if !file.pagesChecked && analysis.status != .error { out.append("  pages: not read (--quick)") }
        for page in file.corruptPages {
            out.append("  CORRUPT PAGE: block \(page.block) page \(page.page) (file offset \(page.fileOffset))")
        }
        if file.corruptPageCount > file.corruptPages.count { out.append("  ... \(file.corruptPageCount - file.corruptPages.count) more corrupt pages") }
        if let state = file.deviceState {
            out.append("  device state: \(Self.size(file.stateLength)) at offset \(file.stateOffset)")
            out += Self.stream(state, indent: "    ")
        }
        return out
    }

    static func stream(_ s: StreamAnalysis, indent: String) -> [String] {
        var out: [String] = []
        if let channel = s.channel {
            out.append("\(indent)stream: version \(s.version), \(channel.role) channel \(channel.index), migration \(channel.migrationID)")
        }
        if let c = s.configuration {
            let blocks = c.blocks.map { "\($0.name) \(size($0.bytes)) (\($0.pageSize)-byte pages)" }.joined(separator: ", ")
            out.append("\(indent)configuration: \(c.vcpus) vCPU(s); RAM blocks: \(blocks)")
        }
        if let residency = s.residency {
            out.append("\(indent)residency: " + residency.map { "\($0.block) \($0.residentChunks) of \($0.chunks) 2 MiB chunks" }.joined(separator: ", "))
        }
        if let plan = s.channelPlan {
            out.append("\(indent)channel plan: \(plan.multifd) multifd channel(s), compression \(plan.compression)"
                       + (plan.mappedRAM ? ", pages in the mapped-ram file" : ""))
        }
        let kinds = s.frames.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        out.append("\(indent)frames: \(s.frameCount) (\(kinds)), \(s.corruptFrameCount == 0 ? "every checksum matches" : "\(s.corruptFrameCount) CORRUPT")")
        for p in s.pages where s.frames["pages"] != nil {
            out.append("\(indent)pages of \(p.block): \(p.normal) normal, \(p.zero) zero")
        }
        if s.resentMismatches > 0 {
            out.append("\(indent)pages sent again after a copy that did not match (written during a live save): \(s.resentMismatches)")
        }
        for section in s.sections {
            out.append("\(indent)section \(section.name) version \(section.version): \(section.bytes) bytes (frame at \(section.offset))")
        }
        if let end = s.end {
            out.append("\(indent)end: \(end.frames) frames before it, digest \(end.digest): both match what was read")
        }
        if s.trailingBytes > 0 { out.append("\(indent)\(s.trailingBytes) bytes after the end frame (not read by a restore)") }
        for frame in s.corruptFrames {
            out.append("\(indent)CORRUPT FRAME \(frame.index) (\(frame.kind), offset \(frame.offset)): \(frame.reason)")
        }
        for page in s.corruptPages {
            out.append("\(indent)CORRUPT PAGE: block \(page.block) offset \(page.offset) (its last copy does not match its checksum)")
        }
        if s.corruptPageCount > s.corruptPages.count { out.append("\(indent)... \(s.corruptPageCount - s.corruptPages.count) more corrupt pages") }
        return out
    }

    /// Bytes, and in binary units when large.
    static func size(_ bytes: UInt64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes), unit = -1
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        guard unit >= 0 else { return "\(bytes) bytes" }
        let rounded = (value * 10).rounded() / 10
        return "\(bytes) bytes (\(rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)) \(units[unit]))"
    }
}
