import Foundation
import HostThreads
import QMP
import VMM

/// `--monitor stdio`: QEMU's human monitor on the terminal.  Each line goes
/// through `human-monitor-command`, the same path a QMP client takes.
enum HumanMonitor {
    /// Reads lines until EOF or `quit`; each runs under `commands`, the lock QMP commands take too.
    static func start(_ vm: Machine, commands: NSLock) {
        HostThread.start("ferry-monitor") {
            write("QEMU \(Machine.version.major).\(Machine.version.minor).\(Machine.version.micro) monitor (Ferry) - type 'help' for more information\n(qemu) ")
            while let line = readLine(strippingNewline: true) {
                let command = QMPCommand.humanMonitorCommand(commandLine: line, cpuIndex: nil)
                let result = commands.withLock { vm.execute(command) }
                if case .success(.string(let text)) = result { write(text) }
                if case .success = result { vm.afterReply(to: command)?() }
                if vm.isFinished { return }
                write("(qemu) ")
            }
        }
    }

    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
