import Synchronization

/// A serial console's output on a stream the host writes its own messages to
/// (`--serial stdio`: the guest's bytes and Ferry's lines reach one terminal or pipe).
///
/// The guest may stop in the middle of a line; `endLine()` finishes that line
/// first, so the host's next message starts at the beginning of one.
public final class SharedConsole: Sendable {
    private let sink: @Sendable ([UInt8]) -> Void
    /// Whether the last byte written was not a newline. The lock also keeps
    /// the guest's bytes and `endLine()` in order.
    private let midLine = Mutex(false)

    public init(sink: @escaping @Sendable ([UInt8]) -> Void) { self.sink = sink }

    public func write(_ bytes: [UInt8]) {
        guard let last = bytes.last else { return }
        midLine.withLock { midLine in
            sink(bytes)
            midLine = last != UInt8(ascii: "\n")
        }
    }

    /// Ends the guest's unfinished line, if it left one.
    public func endLine() {
        midLine.withLock { midLine in
            if midLine { sink([UInt8(ascii: "\n")]) }
            midLine = false
        }
    }
}
