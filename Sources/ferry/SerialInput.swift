import Devices
import Foundation
import HostThreads

/// Copies stdin to the guest's COM1 receive buffer on a background thread.
enum SerialInput {
    static func forward(to serial: Serial16550) {
        HostThread.start("ferry-serial-in") {
            let input = FileHandle.standardInput
            while true {
                let data = input.availableData
                if data.isEmpty { return }          // EOF (or /dev/null in CI)
                serial.receive([UInt8](data))
            }
        }
    }
}
