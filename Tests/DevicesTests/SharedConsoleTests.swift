import Devices
import Synchronization
import Testing

@Suite struct SharedConsoleTests {
    final class Collected: Sendable {
        let bytes = Mutex<[UInt8]>([])
        var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
    }

    @Test func endLineFinishesOnlyAnUnfinishedLine() {
        let collected = Collected()
        let console = SharedConsole { bytes in collected.bytes.withLock { $0 += bytes } }
        console.endLine()
        #expect(collected.text == "")
        console.write(Array("HB 1 t=0\nHB 2 t=1".utf8))
        console.endLine()
        #expect(collected.text == "HB 1 t=0\nHB 2 t=1\n")
        console.endLine()
        console.write(Array("HB 3\n".utf8))
        console.write([])
        console.endLine()
        #expect(collected.text == "HB 1 t=0\nHB 2 t=1\nHB 3\n")
    }
}
