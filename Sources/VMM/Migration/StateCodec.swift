import KVM
import Migration
import MigrationProtocol

/// The wire form of vCPU and platform state inside their sections:
///
///     vCPU:     count u8 | (part u8 | length u32 | bytes)* | msrs u16 | (index u32 | value u64)* | tsc-khz u32
///     platform: count u8 | (part u8 | length u32 | bytes)*
///
/// Decoding checks every part number, length and count, and that each part
/// arrives exactly once, before anything reaches KVM.
enum StateCodec {
    static func encode(_ state: VCPUState) -> [UInt8] {
        var w = WireWriter(capacity: 8192)
        encodeParts(state.parts.map { ($0.key.rawValue, $0.value) }, into: &w)
        w.append(VCPUState.encodeMSRs(state.msrs))
        w.u32(state.tscKHz)
        return w.bytes
    }

    static func decodeVCPU(_ bytes: [UInt8]) throws(MigrationError) -> VCPUState {
        var r = WireReader(bytes)
        do throws(ProtocolError) {
            let raw = try decodeParts(&r, sizes: Dictionary(uniqueKeysWithValues: VCPUState.Part.allCases.map { ($0.rawValue, $0.byteCount) }))
            let msrs: (msrs: [VCPUState.MSR], byteCount: Int)
            do throws(VCPUStateError) { msrs = try VCPUState.decodeMSRs(bytes[r.index...]) } catch { throw .malformed("MSRs: \(error)") }
            _ = try r.bytes(msrs.byteCount, "MSRs")
            let tscKHz = try r.u32("TSC kHz")
            guard r.isAtEnd else { throw .malformed("\(r.remaining) bytes after the vCPU state") }
            let parts = Dictionary(uniqueKeysWithValues: raw.map { (VCPUState.Part(rawValue: $0.key)!, $0.value) })
            return VCPUState(parts: parts, msrs: msrs.msrs, tscKHz: tscKHz)
        } catch { throw .stream(error) }
    }

    static func encode(_ state: PlatformState) -> [UInt8] {
        var w = WireWriter(capacity: 4096)
        encodeParts(state.parts.map { ($0.key.rawValue, $0.value) }, into: &w)
        return w.bytes
    }

    static func decodePlatform(_ bytes: [UInt8]) throws(MigrationError) -> PlatformState {
        var r = WireReader(bytes)
        do throws(ProtocolError) {
            let raw = try decodeParts(&r, sizes: Dictionary(uniqueKeysWithValues: PlatformState.Part.allCases.map { ($0.rawValue, $0.byteCount) }))
            guard r.isAtEnd else { throw .malformed("\(r.remaining) bytes after the platform state") }
            return PlatformState(parts: Dictionary(uniqueKeysWithValues: raw.map { (PlatformState.Part(rawValue: $0.key)!, $0.value) }))
        } catch { throw .stream(error) }
    }

    private static func encodeParts(_ parts: [(UInt8, [UInt8])], into w: inout WireWriter) {
        w.u8(UInt8(parts.count))
        for (part, bytes) in parts.sorted(by: { $0.0 < $1.0 }) {
            w.u8(part)
            w.u32(UInt32(bytes.count))
            w.append(bytes)
        }
    }

    /// Every known part exactly once, each of its exact size.
    private static func decodeParts(_ r: inout WireReader, sizes: [UInt8: Int]) throws(ProtocolError) -> [UInt8: [UInt8]] {
        let count = Int(try r.u8("part count"))
        guard count == sizes.count else { throw .malformed("\(count) state parts, expected \(sizes.count)") }
        var parts: [UInt8: [UInt8]] = [:]
        for _ in 0..<count {
            let part = try r.u8("part number")
            guard let size = sizes[part] else { throw .malformed("unknown state part \(part)") }
            let length = Int(try r.u32("part \(part) length"))
            guard length == size else { throw .malformed("state part \(part) is \(length) bytes, expected \(size)") }
            guard parts[part] == nil else { throw .malformed("state part \(part) appears twice") }
            parts[part] = Array(try r.bytes(length, "part \(part)"))
        }
        return parts
    }
}
