import Synchronization

/// The descriptors one QMP connection received that no command has taken yet.
///
/// QEMU's rules (its socket chardev's `read_msgfds`): the descriptors of a
/// message replace those of an earlier one not taken (which are closed); a
/// command that wants a descriptor takes the first and the others are closed.
/// Ferry places each message's descriptors in the byte stream, so commands
/// sent back to back without waiting for replies each get their own: a
/// message's descriptors are for the texts that end at or after a stream
/// offset (`deliver`), and a command takes what was there for its own end
/// (`takeFirst`).  Once the connection has closed, the inbox is closed: what it
/// held, and anything delivered later, is closed at once, so nothing a client
/// passed outlives its connection unless a command took it.
public final class DescriptorInbox: Sendable {
    struct Message {
        /// The descriptors are for texts whose end (the offset past their last byte) is at least this.
        let from: Int
        let descriptors: [ReceivedDescriptor]
    }
    struct State {
        /// Oldest first; `from` increasing.
        var messages: [Message] = []
        var closed = false
    }
    let state = Mutex(State())

    public init() {}

    /// The descriptors that came with one read of the stream, for texts ending
    /// at `from` or later (`from` is the offset just past the read's last
    /// byte).  Reads are delivered in order.  After `close()`, `descriptors`
    /// are closed at once.
    public func deliver(_ descriptors: [ReceivedDescriptor], forTextsEndingFrom from: Int) {
        guard !descriptors.isEmpty else { return }
        let refused = state.withLock { state -> Bool in
            if !state.closed { state.messages.append(Message(from: from, descriptors: descriptors)) }
            return state.closed
        }
        if refused { for descriptor in descriptors { descriptor.close() } }
    }

    /// Once a read's bytes are decoded, every text still to come ends after
    /// it, so only the last message can serve one: the others are replaced,
    /// and closed (QEMU's "a message replaces the one before").
    public func keepLatest() {
        let dropped = state.withLock { state -> [Message] in
            defer { state.messages = Array(state.messages.suffix(1)) }
            return Array(state.messages.dropLast())
        }
        for descriptor in dropped.flatMap(\.descriptors) { descriptor.close() }
    }

    /// For a command (`getfd`, `add-fd`) whose text ends at `end`: the first
    /// descriptor of the last message meant for it; that message's others, and
    /// older messages', are closed.  Messages for later texts stay.  Nil if
    /// none is waiting for it.
    public func takeFirst(forTextEndingAt end: Int) -> ReceivedDescriptor? {
        let served = state.withLock { state -> [Message] in
            let count = state.messages.prefix(while: { $0.from <= end }).count
            defer { state.messages.removeFirst(count) }
            return Array(state.messages.prefix(count))
        }
        guard let last = served.last else { return nil }
        for descriptor in served.dropLast().flatMap(\.descriptors) + last.descriptors.dropFirst() { descriptor.close() }
        return last.descriptors.first
    }

    /// How many descriptors wait for a command.
    public var count: Int { state.withLock { $0.messages.reduce(0) { $0 + $1.descriptors.count } } }

    /// Closes every waiting descriptor and any delivered later.  Idempotent.
    public func close() {
        let dropped = state.withLock { state -> [Message] in
            state.closed = true
            defer { state.messages = [] }
            return state.messages
        }
        for descriptor in dropped.flatMap(\.descriptors) { descriptor.close() }
    }
}
