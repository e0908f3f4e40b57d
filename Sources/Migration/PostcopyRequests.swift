import DequeModule
import GuestMemory
import MigrationProtocol
import Synchronization

/// The source's queue of the destination's page requests, filled by the
/// return-path reader's thread and emptied by the migration thread before
/// each background batch.  Every request is checked against the RAM layout
/// where it arrives; one that does not fit (or any before the switch to
/// postcopy, when no guest can be waiting) fails the migration.
final class PostcopyRequests: Sendable {
    struct Request: Equatable, Sendable {
        let block: Int
        let pages: Range<Int>
    }

    struct State {
        var queue = Deque<Request>()
        var accepting = false
        var received: UInt64 = 0
        /// Requests inside the huge page the background was sending (it finished them).
        var dropped: UInt64 = 0
        /// Pages sent on the preempt channel.
        var urgentPages: UInt64 = 0
        var failure: MigrationError?
        /// Rung when a request arrives, so a migration thread waiting to write the background serves it at once.
        var doorbell: (any ChannelDoorbell)?
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
            s.failure = nil
        }
    }

    /// Rings `doorbell` (nil: none) from now on when a request arrives, or is refused.
    func ringOnArrival(_ doorbell: (any ChannelDoorbell)?) { state.withLock { $0.doorbell = doorbell } }

    /// A request from the return path; `false` if it is refused (the failure is kept).
    func add(block: UInt16, offset: UInt64, length: UInt64) -> Bool {
        let checked = check(block: block, offset: offset, length: length)
        let (accepted, doorbell) = state.withLock { s -> (Bool, (any ChannelDoorbell)?) in
            guard s.failure == nil else { return (false, nil) }
            switch checked {
            case .failure(let error):
                s.failure = error
                return (false, s.doorbell)
            case .success(let request):
                guard s.accepting else {
                    s.failure = .stream(.unexpectedFrame("a page request before the switch to postcopy"))
                    return (false, s.doorbell)
                }
                guard s.queue.count < Self.maximumQueued else {
                    s.failure = .stream(.malformed("more than \(Self.maximumQueued) page requests waiting"))
                    return (false, s.doorbell)
                }
                s.received += 1
                s.queue.append(request)
                return (true, s.doorbell)
            }
        }
        doorbell?.ring()        // outside the lock: a write to an eventfd
        return accepted
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
    func served(urgentPages count: Int) { state.withLock { $0.urgentPages += UInt64(count) } }
    var counts: (dropped: UInt64, urgentPages: UInt64) { state.withLock { ($0.dropped, $0.urgentPages) } }

    /// Why a request was refused, if one was.
    var failure: MigrationError? { state.withLock { $0.failure } }
}
