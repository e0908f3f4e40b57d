import DequeModule
import GuestMemory
import MigrationProtocol
import Synchronization

/// The source's page requests from the destination, as the return-path
/// reader's thread receives them.  Every request is checked against the RAM
/// layout where it arrives; one that does not fit (or any before the switch to
/// postcopy, when no guest can be waiting) fails the migration.
///
/// A checked request is either queued, for the migration thread to take
/// before each background batch, or, while a `Server` is installed (postcopy
/// with a preempt channel), served at once on the reader's thread: the pages
/// leave on the preempt channel without a second thread to wake (measured at
/// 1 Gbit/s: that wake was a request's largest wait, 28 µs at the median and
/// 0.6 ms at the 99th percentile on a busy host).  Requests arrive on two
/// readers' threads then (the main return path's, and the preempt channel's
/// own way back); one serves at a time, and a request that arrives on the
/// other meanwhile is handed over to it.
final class PostcopyRequests: Sendable {
    struct Request: Equatable, Sendable {
        let block: Int
        let pages: Range<Int>
    }

    /// Serves one request on the calling thread; a failure fails the migration's
    /// postcopy phase (it pauses: `take` and `stopServing` give it).
    typealias Server = @Sendable (Request) throws(MigrationError) -> Void

    struct State {
        var queue = Deque<Request>()
        var accepting = false
        var received: UInt64 = 0
        /// Requests inside the huge page the background was sending (it finished them).
        var dropped: UInt64 = 0
        /// Pages sent on the preempt channel.
        var urgentPages: UInt64 = 0
        /// Of those, pages the background had sent already (`PostcopyPicker.RequestPick.resend`).
        var resentPages: UInt64 = 0
        var failure: MigrationError?
        /// Rung when a request is queued or refused, so a migration thread waiting to write the background sees it at once.
        var doorbell: (any ChannelDoorbell)?
        /// Serves requests as they arrive instead of queueing them (`serveOnArrival`).
        var server: Server?
        /// A reader's thread is in `server`: `stopServing` waits for it.
        var serving = false
        /// Requests another reader's thread received while one was serving: it serves them next.
        var handedOver = Deque<Request>()
        /// `abandonServing` is shutting the channel a request is being served on:
        /// that request's failure is a consequence, not a cause, and is not kept.
        var abandoning = false
    }

    let layout: [MigrationConfiguration.Block]
    /// Bytes per placement unit of each block: a request names exactly one (4 KiB, or 2 MiB on hugetlb).
    let unitBytes: [Int]
    let state = Mutex(State())
    /// More requests queued than any destination has vCPUs waiting: a destination gone wrong.
    static let maximumQueued = 1 << 16

    init(layout: [MigrationConfiguration.Block], unitBytes: [Int]) {
        precondition(layout.count == unitBytes.count)
        (self.layout, self.unitBytes) = (layout, unitBytes)
    }

    /// From now on requests are served (the switch to postcopy).
    func open() { state.withLock { $0.accepting = true } }

    /// A recovery starts on a new connection: the requests of the broken one
    /// are dropped (the destination asks again for what it still waits for),
    /// and so is a refused one's failure (the pause reported it).
    func reset() {
        state.withLock { s in
            s.queue.removeAll()
            s.handedOver.removeAll()
            s.failure = nil
        }
    }

    /// Rings `doorbell` (nil: none) from now on when a request is queued or refused, or fails to be served.
    func ringOnArrival(_ doorbell: (any ChannelDoorbell)?) { state.withLock { $0.doorbell = doorbell } }

    /// A request from the return path; `false` if it is refused (the failure is kept).
    func add(block: UInt16, offset: UInt64, length: UInt64) -> Bool {
        let checked = check(block: block, offset: offset, length: length)
        let (accepted, doorbell, served) = state.withLock { s -> (Bool, (any ChannelDoorbell)?, (Server, Request)?) in
            guard s.failure == nil else { return (false, nil, nil) }
            switch checked {
            case .failure(let error):
                s.failure = error
                return (false, s.doorbell, nil)
            case .success(let request):
                guard s.accepting else {
                    s.failure = .stream(.unexpectedFrame("a page request before the switch to postcopy"))
                    return (false, s.doorbell, nil)
                }
                if let server = s.server, !s.serving {
                    s.received += 1
                    s.serving = true
                    return (true, nil, (server, request))
                }
                // Queued for the migration thread, or, while another reader's thread is serving,
                // handed over to it (one server at a time).
                let handing = s.server != nil
                guard (handing ? s.handedOver.count : s.queue.count) < Self.maximumQueued else {
                    s.failure = .stream(.malformed("more than \(Self.maximumQueued) page requests waiting"))
                    return (false, s.doorbell, nil)
                }
                s.received += 1
                if handing {
                    s.handedOver.append(request)
                    return (true, nil, nil)
                }
                s.queue.append(request)
                return (true, s.doorbell, nil)
            }
        }
        doorbell?.ring()        // outside the lock: a write to an eventfd
        guard let (server, request) = served else { return accepted }
        serve(request, with: server)
        return true
    }

    /// Serves `request`, then those handed over meanwhile by another reader's
    /// thread, outside the lock (the server sends).  Once the server fails or is
    /// removed, the handed-over requests go to the queue, for whoever serves next.
    private func serve(_ request: Request, with server: Server) {
        var next: Request? = request
        while let current = next {
            var failure: MigrationError?
            do { try server(current) } catch { failure = error }
            let ring: (any ChannelDoorbell)?
            (next, ring) = state.withLock { s -> (Request?, (any ChannelDoorbell)?) in
                var ring: (any ChannelDoorbell)?
                if let failure, s.failure == nil, !s.abandoning {
                    s.failure = failure
                    ring = s.doorbell
                }
                if failure == nil, s.failure == nil, s.server != nil, let handed = s.handedOver.popFirst() { return (handed, nil) }
                s.queue.prepend(contentsOf: s.handedOver)
                s.handedOver.removeAll()
                s.serving = false
                return (nil, ring)
            }
            ring?.ring()
        }
    }

    /// Serves every request from now on with `server`, on the thread it arrives
    /// on, until `stopServing`.  The requests queued until now are served
    /// first, on the calling thread, so that two threads never serve at once.
    /// Throws a refused request's failure.
    func serveOnArrival(_ server: @escaping Server) throws(MigrationError) {
        while true {
            let waiting = try state.withLock { s throws(MigrationError) -> [Request] in
                if let failure = s.failure { throw failure }
                guard s.queue.isEmpty else {
                    defer { s.queue.removeAll() }
                    return Array(s.queue)
                }
                s.server = server
                return []
            }
            guard !waiting.isEmpty else { return }
            for request in waiting { try server(request) }
        }
    }

    /// Requests are queued again from now on; returns once a request being
    /// served on the reader's thread is out, with the failure kept if one was
    /// refused or failed to be served.
    @discardableResult
    func stopServing() -> MigrationError? {
        state.withLock { $0.server = nil }
        while state.withLock({ $0.serving }) { sleepUntil(.now + .microseconds(50)) }
        return failure
    }

    /// The migration thread failed: as `stopServing`, after `interrupt` (which
    /// shuts the channel requests are served on, so a request being served into
    /// a stalled socket gives up), and that request's failure is not kept: the
    /// migration thread's own is the cause.
    func abandonServing(_ interrupt: () -> Void) {
        state.withLock { s in
            s.server = nil
            s.abandoning = true
        }
        interrupt()
        stopServing()
        state.withLock { $0.abandoning = false }
    }

    private func check(block: UInt16, offset: UInt64, length: UInt64) -> Result<Request, MigrationError> {
        // The decoder has checked alignment, a non-zero length, and no overflow.
        guard Int(block) < layout.count else {
            return .failure(.stream(.malformed("a page request for RAM block \(block); there are \(layout.count)")))
        }
        let size = layout[Int(block)].byteCount
        guard offset < size, length <= size - offset else {
            return .failure(.stream(.malformed("a page request for \(length) bytes at \(offset) of RAM block '\(layout[Int(block)].name)', which has \(size)")))
        }
        let unit = UInt64(unitBytes[Int(block)])
        guard offset % unit == 0, length == unit else {
            return .failure(.stream(.malformed("a page request for \(length) bytes at \(offset) of RAM block '\(layout[Int(block)].name)', which is not one whole \(unit)-byte page of it")))
        }
        let page = UInt64(PageSize.base.byteCount)
        return .success(Request(block: Int(block), pages: Int(offset / page)..<Int((offset + length) / page)))
    }

    /// The oldest request waiting; throws the failure a refused request left.
    func take() throws(MigrationError) -> Request? {
        try state.withLock { s throws(MigrationError) -> Request? in
            if let failure = s.failure { throw failure }
            return s.queue.popFirst()
        }
    }

    var received: UInt64 { state.withLock { $0.received } }

    /// Whether no request waits (a refused one counts as waiting: `take` throws it).
    var isEmpty: Bool { state.withLock { $0.queue.isEmpty && $0.failure == nil } }

    func dropped() { state.withLock { $0.dropped += 1 } }
    func served(urgentPages count: Int, resent: Bool = false) {
        state.withLock {
            $0.urgentPages += UInt64(count)
            if resent { $0.resentPages += UInt64(count) }
        }
    }
    var counts: (dropped: UInt64, urgentPages: UInt64, resentPages: UInt64) {
        state.withLock { ($0.dropped, $0.urgentPages, $0.resentPages) }
    }

    /// The way back a request came on failed (`error`): kept as a refused request's failure.
    func refuse(_ error: MigrationError) {
        let ring = state.withLock { s -> (any ChannelDoorbell)? in
            guard s.failure == nil else { return nil }
            s.failure = error
            return s.doorbell
        }
        ring?.ring()
    }

    /// Why a request was refused, if one was.
    var failure: MigrationError? { state.withLock { $0.failure } }
}
