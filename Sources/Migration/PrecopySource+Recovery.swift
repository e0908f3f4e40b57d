import MigrationProtocol

/// Postcopy recovery on the source.  Once the destination runs the guest, a
/// broken connection, a silent destination or a refused page request pauses
/// the migration instead of failing it (the guest's newest memory is there;
/// this side keeps every page it still has to send):
///
///     postcopy-active ──(break, or migrate-pause)──▶ postcopy-paused
///     postcopy-paused ──(migrate resume:true)──▶ postcopy-recover-setup ──(connected; stream header, `resume`)──▶ postcopy-recover
///     postcopy-recover ──(a received bitmap per block; the pages it lacks become the dirty set)──▶ postcopy-active
///     postcopy-recover-setup / postcopy-recover ──(the new connection fails)──▶ postcopy-paused
///
/// Only the destination's own "failed" answer ends it (it will not go on).
/// The guest here stays stopped throughout.
extension PrecopySource {
    /// QMP `migrate` with `resume: true`: reconnect a paused postcopy through `opener`.
    public func resume(through opener: any ChannelOpener) throws(MigrationError) {
        let paused = statusEvents.withLock { _ -> Bool in
            let paused = progress.withLock { p -> Bool in
                guard p.info.status == .postcopyPaused else { return false }
                p.info.status = .postcopyRecoverSetup
                return true
            }
            if paused { onStatus(.postcopyRecoverSetup) }
            return paused
        }
        guard paused else {
            opener.cancel()
            throw .invalidState("Cannot resume if there is no paused migration")
        }
        recovery.offer(opener)
    }

    /// QMP `migrate-pause` on the source: the connection is shut, and postcopy pauses.
    public func pause() throws(MigrationError) {
        let connected = progress.withLock { p -> Bool in
            guard p.info.status.isPostcopyConnected else { return false }
            recovery.reason = "Postcopy migration is paused by the user"
            return true
        }
        guard connected else {
            throw .invalidState("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")
        }
        channel.shutdown()
        preempt.withLock { $0 }?.channel.shutdown()
    }

    /// The machine goes away: a paused postcopy will never be resumed.
    public func abandon() { recovery.abandon() }

    /// After `error` in postcopy: throws if the destination refused (it will
    /// not go on) or the migration is abandoned; otherwise pauses until a
    /// `resume` reconnects and the destination has said which pages it lacks.
    func pauseUntilResumed(after error: MigrationError, endsSent: Bool = false) throws(MigrationError) {
        // The destination's own refusal ends the migration; it may have said why before closing.
        if error.isDestinationAnswer { throw error }
        var cause = requests.failure ?? error
        if let answer = destinationRefusal() { cause = answer }
        if cause.isDestinationAnswer || recovery.isAbandoned { throw cause }
        if recovery.reason == nil {
            // Every frame was written: the destination may have them all and be complete,
            // and then no recovery will come (quit this side once it says so).
            recovery.reason = endsSent
                ? "\(cause); both end frames were sent, so the destination may have every page: if it reports completed, nothing is left to do here ('quit')"
                : cause.description
        }
        while true {
            closeConnection()
            statusEvents.withLock { _ in
                progress.withLock { p in
                    p.info.status = .postcopyPaused
                    p.postcopyPauses += 1
                    p.recentWindows = []        // the recovery may take another path: its pace is not known
                    p.hugePageYield = nil       // and a new preempt channel holds nothing yet
                    p.backgroundPace = nil
                    p.earlierYields = p.info.postcopyYields
                }
                onStatus(.postcopyPaused)
            }
            guard let opener = recovery.take() else { throw .postcopyFailed("the machine quit while postcopy was paused") }
            do {
                try reconnect(through: opener)
                recovery.release(opener)
                recovery.reason = nil
                setStatus(.postcopyActive)
                return
            } catch {
                recovery.release(opener)
                if error.isDestinationAnswer { throw error }
                if recovery.isAbandoned { throw .postcopyFailed("the machine quit while postcopy was paused") }
                recovery.reason = "the recovery failed: \(error)"
            }
        }
    }

    /// Shuts the main and preempt channels, waits for the return-path reader,
    /// closes them; what the main channel carried is kept for `query-migrate`.
    func closeConnection() {
        closePreempt()
        preempt.withLock { $0 = nil }
        preemptRequests.withLock { $0 = nil }
        closeChannel()
        // What it carried is kept aside, and a writer with nothing written stands in until a
        // new connection (`query-migrate` adds the two: counted once).
        let closed = channel
        let (bytes, frames) = (writer.bytesWritten, writer.framesWritten)
        progress.withLock { p in
            p.earlierMain = (p.earlierMain.bytes + bytes, p.earlierMain.frames + frames)
            connection.withLock { $0 = (closed, StreamWriter(channel: closed, limiter: limiter)) }
        }
    }

    /// Opens the new main channel, says it resumes this migration, opens the
    /// preempt channel again, and makes the destination's missing pages the dirty set.
    private func reconnect(through opener: any ChannelOpener) throws(MigrationError) {
        let fresh = PendingChannel(opener)
        connection.withLock { $0 = (fresh, StreamWriter(channel: fresh, limiter: limiter)) }
        do { try fresh.open() } catch { throw .channel(error) }
        guard fresh.hasReturnPath else {
            throw .invalidState("postcopy recovery needs the destination's answers, so a socket: this URI has no return path")
        }
        // Requests queued before the break are asked again by the destination once it is connected.
        requests.reset()
        startReturnPath()
        try writer.sendStreamHeader(ChannelIdentity(role: .main, migrationID: migrationID))
        let preempting = capabilities.postcopyPreempt
        try writer.send(.resume, payload: ChannelPlan(multifd: 0, preempt: preempting, preemptRequests: preempting).encode())
        if preempting { try openPreempt(migrationID: migrationID, opener: opener) }
        setStatus(.postcopyRecover)
        try parts.ram.resumePostcopy(received: try awaitReceivedBitmaps())
    }

    /// The destination's received bitmap of every block, each once.
    private func awaitReceivedBitmaps() throws(MigrationError) -> [[UInt64]] {
        guard let reader = returnPath.withLock({ $0 }) else { throw .invalidState("no return path") }
        let layout = parts.ram.layout
        var received = [[UInt64]?](repeating: nil, count: layout.count)
        let deadline = ContinuousClock.now + Self.returnPathTimeout
        while received.contains(where: { $0 == nil }) {
            let remaining = deadline - .now
            guard remaining > .zero, let event = reader.next(timeout: remaining) else {
                throw .destination("no received bitmap within \(Self.returnPathTimeout)")
            }
            switch event {
            case .message(.receivedBitmap(let block, let words)):
                guard Int(block) < layout.count else {
                    throw .stream(.malformed("a received bitmap for RAM block \(block); there are \(layout.count)"))
                }
                guard received[Int(block)] == nil else {
                    throw .stream(.unexpectedFrame("a second received bitmap for RAM block '\(layout[Int(block)].name)'"))
                }
                received[Int(block)] = words
            case .message(.failed(let reason)): throw .refused(reason)
            case .message(.shut), .closed: throw .destination("it closed the connection before saying which pages it has")
            case .message(let other): throw .stream(.unexpectedFrame("a \(other.type) message where received bitmaps were due"))
            case .failed(let error): throw error
            }
        }
        return received.map { $0 ?? [] }
    }
}
