import Devices
import Glibc
import GuestMemory
import Synchronization

/// libFuzzer target `virtio`: a hostile driver against Ferry's virtio-balloon
/// on its virtio-mmio transport.  The input's first byte picks the mode:
///
/// - even: the rest is guest memory for the rings' area (copied to 0x10000)
///   after a standard set-up (negotiation, three queues at fixed addresses,
///   DRIVER_OK), followed by a script of 7-byte operations: register writes
///   and reads anywhere in the window, queue notifications, and host actions
///   (a balloon target, hint commands).
/// - odd: the rest is a migrated device state, loaded into a fresh device.
///
/// Refusals (DEVICE_NEEDS_RESET, a thrown `DeviceStateError`) are expected; a
/// crash, a trap, a hang, a host request for a range outside RAM, or a broken
/// device without DEVICE_NEEDS_RESET is a finding.

let memory = try! GuestMemoryMap.pc(byteCount: 4 << 20, backend: .anon)
let ringArea: UInt64 = 0x10000
let ringAreaBytes = 0x40000

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> Int32 {
    let arguments = CommandLine.arguments
    if let flag = arguments.firstIndex(of: "--make-seeds") {
        guard flag + 1 < arguments.count else { fatalError("usage: FuzzVirtio --make-seeds DIR") }
        VirtioSeeds.write(to: arguments[flag + 1])
        exit(0)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data = unsafe data, size > 0 else { return 0 }
    // SAFETY: libFuzzer hands us `size` readable bytes at `data` for the duration of this call.
    let bytes = unsafe Array(UnsafeBufferPointer(start: data, count: size))
    VirtioTarget.check(bytes)
    return 0
}

enum VirtioTarget {
    static func makeBalloon() -> VirtioBalloon {
        let host = BalloonHost(discard: { range in
            guard (try? memory.locate(range.start, length: range.byteCount)) != nil else {
                fatalError("the balloon asked to discard \(range), which is not RAM")
            }
        }, actualChanged: { _ in })
        return VirtioBalloon(memory: memory, freePageHint: true, host: host, setInterruptLine: { _ in })
    }

    static func write32(_ device: any MMIODevice, _ offset: UInt64, _ value: UInt32) {
        device.write(offset: offset, bytes: (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) })
    }

    static func read32(_ device: any MMIODevice, _ offset: UInt64) -> UInt32 {
        device.read(offset: offset, count: 4).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Negotiation and three 16-entry queues: descriptors at 0x10000 + q * 0x4000,
    /// available ring +0x1000, used ring +0x2000.
    static func standardSetUp(_ device: any MMIODevice) {
        for status: UInt32 in [0, 1, 3] { write32(device, 0x70, status) }
        write32(device, 0x24, 0); write32(device, 0x20, 1 << 3)
        write32(device, 0x24, 1); write32(device, 0x20, 1)
        write32(device, 0x70, 11)
        for q in 0..<3 {
            let base = UInt32(ringArea) + UInt32(q) * 0x4000
            write32(device, 0x30, UInt32(q))
            write32(device, 0x38, 16)
            write32(device, 0x80, base); write32(device, 0x84, 0)
            write32(device, 0x90, base + 0x1000); write32(device, 0x94, 0)
            write32(device, 0xa0, base + 0x2000); write32(device, 0xa4, 0)
            write32(device, 0x44, 1)
        }
        write32(device, 0x70, 15)
    }

    static func check(_ bytes: [UInt8]) {
        let balloon = makeBalloon()
        let payload = Array(bytes.dropFirst())
        if bytes[0] & 1 == 1 {
            let before = balloon.saveState()
            do {
                try balloon.loadState(payload)
                // What loaded must save back to the same bytes.
                guard balloon.saveState() == payload else { fatalError("a loaded state does not save back the same") }
            } catch {
                guard balloon.saveState() == before else { fatalError("a refused state changed the device") }
            }
            return
        }
        let area = Array(payload.prefix(ringAreaBytes / 4))
        try! memory.write([UInt8](repeating: 0, count: ringAreaBytes), at: GuestAddress(ringArea))
        try! memory.write(area, at: GuestAddress(ringArea))
        let device = balloon.transport
        standardSetUp(device)
        var script = payload.dropFirst(area.count)
        while script.count >= 7 {
            let op = script.removeFirst()
            let offset = UInt64(script.removeFirst()) | UInt64(script.removeFirst()) << 8
            var value: UInt32 = 0
            for i in 0..<4 { value |= UInt32(script.removeFirst()) << (8 * i) }
            switch op % 6 {
            case 0: write32(device, offset % 0x200, value)
            case 1: _ = read32(device, offset % 0x200)
            case 2: write32(device, 0x50, value % 4)
            case 3: device.write(offset: 0x100 + offset % 0x100, bytes: Array([UInt8](repeating: UInt8(truncatingIfNeeded: value), count: Int(value % 5))))
            case 4: balloon.setTarget(bytes: UInt64(value) << 12)
            default:
                switch value % 3 {
                case 0: balloon.startHinting(epoch: UInt64(offset)) { range, _ in
                    guard (try? memory.locate(range.start, length: range.byteCount)) != nil else {
                        fatalError("a hint for \(range), which is not RAM")
                    }
                    return 0
                }
                case 1: balloon.stopHinting()
                default: balloon.finishHinting()
                }
            }
            let status = read32(device, 0x70)
            if balloon.transport.brokenReason != nil && status & 64 == 0 { fatalError("broken without DEVICE_NEEDS_RESET") }
        }
    }
}

enum VirtioSeeds {
    /// A few well-formed starts: an inflate of two PFNs, a hint round, a saved state.
    static func write(to directory: String) {
        mkdir(directory, 0o755)
        func save(_ name: String, _ bytes: [UInt8]) {
            let path = directory + "/" + name
            guard let file = fopen(path, "wb") else { return }
            _ = bytes.withUnsafeBufferPointer { unsafe fwrite($0.baseAddress, 1, $0.count, file) }
            fclose(file)
        }
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        // The ring area as the input carries it (0x10000 bytes from 0x10000): queue 0's descriptor 0
        // -> 8 bytes of PFNs at 0x1c000 (past the three queues).
        var area = [UInt8](repeating: 0, count: ringAreaBytes / 4)
        area.replaceSubrange(0..<16, with: le64(0x1c000) + le32(8) + le16(0) + le16(0))
        area.replaceSubrange(0x1000..<0x1006, with: le16(0) + le16(1) + le16(0))
        // Queue 2: descriptor 0 -> a 4-byte id at 0x1c100; descriptor 1 -> a 64 KiB writable block.
        let q2 = 2 * 0x4000
        area.replaceSubrange(q2..<(q2 + 32), with: le64(0x1c100) + le32(4) + le16(0) + le16(0)
                                                  + le64(0x200000) + le32(0x10000) + le16(2) + le16(0))
        area.replaceSubrange((q2 + 0x1000)..<(q2 + 0x1008), with: le16(0) + le16(2) + le16(0) + le16(1))
        let pfnsAt = 0x1c000 - Int(ringArea)
        area.replaceSubrange(pfnsAt..<(pfnsAt + 8), with: le32(0x200) + le32(0x201))
        area.replaceSubrange((pfnsAt + 0x100)..<(pfnsAt + 0x104), with: le32(0x8000_0001))
        let notify0: [UInt8] = [2] + le16(0) + le32(0)
        let start: [UInt8] = [5] + le16(1) + le32(0)
        let notify2: [UInt8] = [2] + le16(0) + le32(2)
        save("inflate", [0] + area + notify0)
        save("hints", [0] + area + start + notify2)
        let balloon = VirtioTarget.makeBalloon()
        VirtioTarget.standardSetUp(balloon.transport)
        save("state", [1] + balloon.saveState())
    }
}
