import Synchronization

/// A 16550A UART (COM1: ports 0x3F8-0x3FF, IRQ 4) with output and input.
///
/// Output bytes go to `output` as the guest writes them; input arrives through
/// `receive(_:)` and raises the interrupt line when the guest enabled the
/// receive interrupt.  The device reaches the machine only through the two
/// closures it is given.
public final class Serial16550: Sendable {
    public static let com1Base: UInt16 = 0x3f8
    public static let com1IRQ: UInt32 = 4
    /// Input bytes buffered before the oldest are dropped, as a FIFO-less UART would overrun.
    static let inputCapacity = 4096

    public let base: UInt16
    private let output: @Sendable ([UInt8]) -> Void
    private let setInterruptLine: @Sendable (Bool) -> Void
    private let state = Mutex(Registers())

    struct Registers {
        var interruptEnable: UInt8 = 0
        var lineControl: UInt8 = 0x03
        var modemControl: UInt8 = 0x08
        var scratch: UInt8 = 0
        var divisor: UInt16 = 12
        var input: [UInt8] = []
        var transmitInterruptPending = false
        var overrun = false

        var dlab: Bool { lineControl & 0x80 != 0 }

        /// IIR: the highest-priority pending interrupt (bit 0 clear when one is pending).
        var interruptIdentification: UInt8 {
            if interruptEnable & 0x01 != 0 && !input.isEmpty { return 0xc4 }      // received data
            if interruptEnable & 0x02 != 0 && transmitInterruptPending { return 0xc2 }  // THR empty
            return 0xc1
        }
        var interruptAsserted: Bool { interruptIdentification & 1 == 0 }
    }

    public init(base: UInt16 = com1Base, output: @escaping @Sendable ([UInt8]) -> Void,
                setInterruptLine: @escaping @Sendable (Bool) -> Void) {
        self.base = base
        self.output = output
        self.setInterruptLine = setInterruptLine
    }

    public func handles(port: UInt16) -> Bool { port >= base && port < base &+ 8 }

    /// A guest `out` (or `rep outs`: each byte is one write to the same port).
    public func write(port: UInt16, bytes: [UInt8]) {
        let register = port - base
        var transmitted: [UInt8] = []
        let line = state.withLock { regs -> Bool in
            for value in bytes {
                switch (register, regs.dlab) {
                case (0, false):
                    transmitted.append(value)
                    regs.transmitInterruptPending = true
                case (0, true): regs.divisor = (regs.divisor & 0xff00) | UInt16(value)
                case (1, true): regs.divisor = (regs.divisor & 0x00ff) | UInt16(value) << 8
                case (1, false):
                    regs.interruptEnable = value & 0x0f
                    if value & 0x02 != 0 { regs.transmitInterruptPending = true }
                case (2, _): break          // FCR: FIFOs are always on; nothing to configure
                case (3, _): regs.lineControl = value
                case (4, _): regs.modemControl = value
                case (7, _): regs.scratch = value
                default: break              // LSR and MSR are read-only
                }
            }
            return regs.interruptAsserted
        }
        if !transmitted.isEmpty { output(transmitted) }
        setInterruptLine(line)
    }

    /// A guest `in`.
    public func read(port: UInt16) -> UInt8 {
        let register = port - base
        let (value, line) = state.withLock { regs -> (UInt8, Bool) in
            let value: UInt8
            switch (register, regs.dlab) {
            case (0, false): value = regs.input.isEmpty ? 0 : regs.input.removeFirst()
            case (0, true): value = UInt8(truncatingIfNeeded: regs.divisor)
            case (1, true): value = UInt8(truncatingIfNeeded: regs.divisor >> 8)
            case (1, false): value = regs.interruptEnable
            case (2, _):
                value = regs.interruptIdentification
                if value == 0xc2 { regs.transmitInterruptPending = false }   // reading IIR clears THRE
            case (3, _): value = regs.lineControl
            case (4, _): value = regs.modemControl
            case (5, _):
                // THR empty and transmitter idle always: output is never slow.
                value = 0x60 | (regs.input.isEmpty ? 0 : 0x01) | (regs.overrun ? 0x02 : 0)
                regs.overrun = false
            case (6, _): value = 0xb0      // CTS, DSR, DCD
            case (7, _): value = regs.scratch
            default: value = 0xff
            }
            return (value, regs.interruptAsserted)
        }
        setInterruptLine(line)
        return value
    }

    /// Host input (stdin) for the guest.
    public func receive(_ bytes: [UInt8]) {
        let line = state.withLock { regs -> Bool in
            regs.input += bytes
            if regs.input.count > Self.inputCapacity {
                regs.input.removeFirst(regs.input.count - Self.inputCapacity)
                regs.overrun = true
            }
            return regs.interruptAsserted
        }
        setInterruptLine(line)
    }
}

extension Serial16550 {
    /// The UART's registers for migration (input not yet read by the guest included):
    /// IER, LCR, MCR, SCR, divisor (2), flags (THRE pending, overrun), then the input bytes.
    public func saveState() -> [UInt8] {
        state.withLock { r in
            [r.interruptEnable, r.lineControl, r.modemControl, r.scratch,
             UInt8(truncatingIfNeeded: r.divisor), UInt8(truncatingIfNeeded: r.divisor >> 8),
             (r.transmitInterruptPending ? 1 : 0) | (r.overrun ? 2 : 0)] + r.input
        }
    }

    /// Loads `saveState()`'s bytes; `false` (nothing changed) if they are malformed.
    public func loadState(_ bytes: [UInt8]) -> Bool {
        guard bytes.count >= 7, bytes.count - 7 <= Self.inputCapacity, bytes[6] & ~3 == 0 else { return false }
        let asserted = state.withLock { r -> Bool in
            (r.interruptEnable, r.lineControl, r.modemControl, r.scratch) = (bytes[0] & 0x0f, bytes[1], bytes[2], bytes[3])
            r.divisor = UInt16(bytes[4]) | UInt16(bytes[5]) << 8
            r.transmitInterruptPending = bytes[6] & 1 != 0
            r.overrun = bytes[6] & 2 != 0
            r.input = Array(bytes[7...])
            return r.interruptAsserted
        }
        setInterruptLine(asserted)
        return true
    }
}

extension Serial16550: PortDevice {
    /// The eight ports from `base`: what a device bus attaches.
    public var ports: ClosedRange<UInt16> { base...(base + 7) }

    /// `count` bytes of accesses of `size` bytes at `port`.  The UART's registers
    /// are a byte each: byte `i` of an access is register `port + i`'s (`in ax`
    /// at the base reads the data and interrupt-enable registers), and a byte past
    /// the eighth port reads as nothing there (0xff).  Each access reads its
    /// registers again (`rep insb` reads the same one each time).
    public func read(port: UInt16, size: Int, count: Int) -> [UInt8] {
        let width = max(size, 1)
        return (0..<count).map { index in
            let target = port &+ UInt16(truncatingIfNeeded: index % width)
            return handles(port: target) ? read(port: target) : 0xff
        }
    }

    /// Accesses of `size` bytes at `port`: byte `i` of each is written to
    /// register `port + i`, as `read` reads them; bytes past the eighth port go nowhere.
    public func write(port: UInt16, size: Int, bytes: [UInt8]) {
        guard size > 1 else { return write(port: port, bytes: bytes) }
        for (index, value) in bytes.enumerated() {
            let target = port &+ UInt16(truncatingIfNeeded: index % size)
            if handles(port: target) { write(port: target, bytes: [value]) }
        }
    }
}
