import Foundation
import Synchronization

/// Collects bytes that arrive in pieces and prints each complete line to
/// stdout with a prefix (the demo's "src|" and "dst|" consoles).
final class LinePrefixer: Sendable {
    let prefix: String
    private let pending = Mutex<[UInt8]>([])

    init(prefix: String) { self.prefix = prefix }

    func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        let lines = pending.withLock { buffer -> [ArraySlice<UInt8>] in
            buffer += bytes
            guard let last = buffer.lastIndex(of: UInt8(ascii: "\n")) else { return [] }
            let complete = buffer[...last].split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast()
            let result = Array(complete)
            buffer.removeFirst(last + 1)
            return result
        }
        for line in lines { FileHandle.standardOutput.write(Data(prefix.utf8 + line + [UInt8(ascii: "\n")])) }
    }
}
