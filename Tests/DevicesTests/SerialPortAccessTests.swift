import Devices
import Synchronization
import Testing

/// The 16550's byte-wide registers reached by 16- and 32-bit port accesses.
@Suite struct SerialPortAccessTests {
    /// What the UART sent.
    final class Output: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var sent: [UInt8] { bytes.withLock { $0 } }
    }

    static func uart(output: Output = Output()) -> Serial16550 {
        Serial16550(output: { bytes in output.bytes.withLock { $0 += bytes } }, setInterruptLine: { _ in })
    }

    @Test func aWordWriteSetsBothDivisorLatchBytes() {
        let uart = Self.uart()
        let base = Serial16550.com1Base
        uart.write(port: base + 3, size: 1, bytes: [0x83])            // LCR: DLAB, 8 bits
        uart.write(port: base, size: 2, bytes: [0x34, 0x12])          // `out dx, ax`: DLL, DLM
        #expect(uart.read(port: base, size: 1, count: 1) == [0x34])
        #expect(uart.read(port: base + 1, size: 1, count: 1) == [0x12])
        #expect(uart.read(port: base, size: 2, count: 2) == [0x34, 0x12])
    }

    @Test func aDoubleWordReachesFourRegistersAndNothingPastTheLast() {
        let output = Output()
        let uart = Self.uart(output: output)
        let base = Serial16550.com1Base
        // THR, IER, FCR, LCR: one byte sent, not four.
        uart.write(port: base, size: 4, bytes: [0x41, 0x00, 0x07, 0x03])
        #expect(output.sent == [0x41])
        // SCR at base + 7, then three bytes past the UART.
        uart.write(port: base + 7, size: 4, bytes: [0x5a, 0x01, 0x02, 0x03])
        #expect(uart.read(port: base + 7, size: 1, count: 1) == [0x5a])
        #expect(uart.read(port: base + 7, size: 4, count: 4) == [0x5a, 0xff, 0xff, 0xff])
        // LCR, MCR, LSR (transmitter empty), MSR.
        #expect(uart.read(port: base + 3, size: 4, count: 4) == [0x03, 0x08, 0x60, 0xb0])
    }

    @Test func repeatedByteAccessesStayOnOnePort() {
        let output = Output()
        let uart = Self.uart(output: output)
        // `rep outsb`: every byte to THR.
        uart.write(port: Serial16550.com1Base, size: 1, bytes: Array("ferry".utf8))
        #expect(output.sent == Array("ferry".utf8))
        // `rep outsw` of two words: each word's bytes to THR and IER.
        output.bytes.withLock { $0 = [] }
        uart.write(port: Serial16550.com1Base, size: 2, bytes: [0x61, 0x00, 0x62, 0x00])
        #expect(output.sent == [0x61, 0x62])
    }
}
