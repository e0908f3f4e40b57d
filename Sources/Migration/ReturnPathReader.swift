import Dispatch
import Foundation
import GuestMemory
import HostThreads
import MigrationProtocol
import Synchronization

/// The source's end of the return path: a thread that reads the destination's
/// frames with `FrameReader` (so through the same `StreamValidator` as the
/// forward stream), decodes each `ReturnMessage` and posts it to a mailbox the
/// migration thread waits on (`next(timeout:)`).  Corresponds to QEMU's
/// `source_return_path_thread`.
///
/// Page requests go to `onPageRequest` on the reader's thread, as postcopy
/// will need them served while the migration thread is blocked in a write;
/// without a handler (precopy: none is ever asked for) they are counted and
/// ignored.  Every other message goes to the mailbox.
///
/// The reader ends at `shut`, at the end of the stream, or at the first error:
/// a malformed return stream (or a failed read) is posted as `.failed`, and the
/// channel is shut down so the migration thread's next write fails at once.
/// Whoever owns the channel stops the reader by shutting the channel down (its
/// blocked read then sees the end), `join`s it, and only then closes the
/// descriptor: a closed descriptor's number may be reused at once.
public final class ReturnPathReader: Sendable {
    /// What the migration thread takes out of the mailbox.
    public enum Event: Equatable, Sendable {
        case message(ReturnMessage)
        /// The return path ended: `shut` arrived, or the destination closed the connection.
        case closed
        /// The return stream was malformed, or reading it failed.
        case failed(MigrationError)

        var ends: Bool { if case .message = self { false } else { true } }
    }

    public typealias PageRequestHandler = @Sendable (_ block: UInt16, _ offset: UInt64, _ length: UInt64) -> Void

    let channel: any ByteChannel
    let onPageRequest: PageRequestHandler?
    /// Only page requests may come (the preempt channel's way back); anything else is malformed.
    let pageRequestsOnly: Bool
    /// Called on the reader's thread when it ends with `.failed`.
    let onFailure: (@Sendable (MigrationError) -> Void)?
    /// Events not yet taken; the last one, once the reader has ended, stays (every later `next` sees it).
    let mailbox = Mutex<[Event]>([])
    /// Signalled once per event posted (and again whenever the final event is looked at).
    let available = DispatchSemaphore(value: 0)
    let finished = DispatchSemaphore(value: 0)
    /// started, joined
    let lifecycle = Mutex((started: false, joined: false))
    let ignoredRequests = Atomic<UInt64>(0)
    let applied = Atomic<UInt64>(0)

    public init(channel: any ByteChannel, onPageRequest: PageRequestHandler? = nil) {
        (self.channel, self.onPageRequest) = (channel, onPageRequest)
        (pageRequestsOnly, onFailure) = (false, nil)
    }

    /// A reader of page requests alone (postcopy's preempt channel, whose way
    /// back carries them apart from the main connection), all to `onPageRequest`;
    /// `onFailure` hears a malformed stream or a failed read (nobody takes this reader's mailbox).
    init(pageRequestsOn channel: any ByteChannel, onPageRequest: @escaping PageRequestHandler,
         onFailure: @escaping @Sendable (MigrationError) -> Void) {
        (self.channel, self.onPageRequest, pageRequestsOnly, self.onFailure) = (channel, onPageRequest, true, onFailure)
    }

    /// Page requests that arrived with no handler to serve them.
    public var ignoredPageRequests: UInt64 { ignoredRequests.load(ordering: .relaxed) }

    /// The highest multifd epoch the destination reports applied (0: none yet).
    public var appliedEpoch: UInt64 { applied.load(ordering: .acquiring) }

    /// Starts the reading thread (once).
    public func start() {
        let first = lifecycle.withLock { l in
            defer { l.started = true }
            return !l.started
        }
        guard first else { return }
        // A thread of its own, not a dispatch queue: it blocks in `read` for the whole
        // migration, and dispatch's shared pool (two threads on a 2-core host, shared
        // with Swift's tasks) could leave it waiting to start while the answer sits unread.
        HostThread.start(pageRequestsOnly ? "mig/src/preempt" : "mig/src/return") { [self] in
            // Postcopy's page requests: a vCPU on the destination waits on each.
            HostThread.makeUrgent()
            let end = readAll()
            post(end)
            if case .failed(let error) = end { onFailure?(error) }
            finished.signal()
        }
    }

    /// Waits until the reading thread has returned.  The caller shuts the
    /// channel down first, or this waits for the destination to close it.
    public func join() {
        let wait = lifecycle.withLock { l in
            defer { l.joined = true }
            return l.started && !l.joined
        }
        if wait { finished.wait() }
    }

    /// The next event, waiting up to `timeout`; `nil` if none came.  Once the
    /// reader has ended, its final event (`.closed` or `.failed`) is returned every time.
    public func next(timeout: Duration) -> Event? {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = max(0, min(seconds, 1 << 30)) * 1_000_000_000 + max(0, attoseconds) / 1_000_000_000
        guard available.wait(timeout: .now() + .nanoseconds(Int(nanoseconds))) == .success else { return nil }
        return mailbox.withLock { events in
            let event = events[0]
            if event.ends { available.signal() } else { events.removeFirst() }
            return event
        }
    }

    func post(_ event: Event) {
        mailbox.withLock { $0.append(event) }
        available.signal()
    }

    /// Answers the migration thread has not taken yet, at most: a received bitmap
    /// per RAM block (a recovery), and a few of the others (one per switchover).
    static let unreadLimit = MigrationConfiguration.maximumBlocks + 16
    /// ... and received-bitmap words among them, at most (one bitmap's worth).
    static let unreadWordsLimit = ReturnMessage.maximumBitmapWords

    /// Posts `message` unless the destination is flooding the mailbox with
    /// answers nobody asked for (a hostile or broken peer would grow it until
    /// the source ran out of memory).
    func queue(_ message: ReturnMessage) throws(MigrationError) {
        let refusal: String? = mailbox.withLock { events in
            let words = events.reduce(message.bitmapWords) { sum, event in
                if case .message(let queued) = event { sum + queued.bitmapWords } else { sum }
            }
            if events.count >= Self.unreadLimit {
                return "the destination sent more than \(Self.unreadLimit) answers the source has not asked for"
            }
            if words > Self.unreadWordsLimit {
                return "the destination sent received bitmaps of more than \(Self.unreadWordsLimit) words the source has not asked for"
            }
            events.append(.message(message))
            return nil
        }
        if let refusal { throw .stream(.malformed(refusal)) }
        available.signal()
    }

    /// Reads until the return path ends; returns how it ended, having posted every message before.
    func readAll() -> Event {
        var reader = FrameReader(channel: channel)
        var payload: [UInt8] = []
        do throws(MigrationError) {
            _ = try reader.readStreamHeader()
            while true {
                let before = reader.bytesRead
                let header: FrameHeader
                do { header = try reader.next(into: &payload) } catch {
                    // The end of the stream between frames is the destination closing it.
                    if case .stream(.truncated) = error, reader.bytesRead == before { return .closed }
                    throw error
                }
                let message: ReturnMessage
                do { message = try ReturnMessage(kind: header.kind, payload: payload) } catch { throw .stream(error) }
                if pageRequestsOnly, message.type != .pageRequest {
                    throw .stream(.unexpectedFrame("a \(message.type) message on the postcopy preempt channel's way back, which carries page requests only"))
                }
                switch message {
                case .pageRequest(let block, let offset, let length):
                    if let onPageRequest { onPageRequest(block, offset, length) } else { ignoredRequests.add(1, ordering: .relaxed) }
                case .shut:
                    post(.message(.shut))
                    return .closed
                case .applied(let epoch):
                    // A progress report, not an answer: kept aside, never queued.
                    guard epoch > applied.load(ordering: .relaxed) else { throw .stream(.malformed("applied epoch \(epoch) went backwards")) }
                    applied.store(epoch, ordering: .releasing)
                case .loaded, .failed, .receivedBitmap, .switchoverAck:
                    try queue(message)
                }
            }
        } catch {
            if case .stream(.truncated) = error, reader.bytesRead == 0 { return .closed }    // closed before saying anything
            // A malformed return stream fails the migration: stop its writes now.
            if case .stream = error { channel.shutdown() }
            return .failed(error)
        }
    }
}

extension ReturnMessage {
    /// Words of a received bitmap; 0 for any other message.
    var bitmapWords: Int { if case .receivedBitmap(_, let words) = self { words.count } else { 0 } }
}
