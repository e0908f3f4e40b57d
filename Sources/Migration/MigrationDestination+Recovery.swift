import MigrationProtocol

/// Postcopy recovery on the destination.  Once the guest runs here, a broken
/// connection (or a stream the load refuses) never fails the migration: the
/// guest runs on the pages it has, a vCPU that touches a missing one waits,
/// and the load waits in `postcopy-paused` for `migrate-recover`:
///
///     postcopy-active ──(break)──▶ postcopy-paused ──(migrate-recover; the source connects)──▶ postcopy-recover
///     postcopy-recover ──(stream header, `resume`, preempt channel; received bitmaps sent)──▶ postcopy-active
///     postcopy-recover ──(the new connection fails)──▶ postcopy-paused
///
/// Only a failure here (the fault thread's, userfaultfd's) or the machine
/// quitting ends it: no new connection can mend those.
extension MigrationDestination {
    /// QMP `migrate-recover`: the source's new connection will come to `acceptor`.
    public func recover(from acceptor: any ChannelAcceptor) throws(MigrationError) {
        guard status == .postcopyPaused else {
            acceptor.close()
            throw .invalidState("Migrate recover can only be run when postcopy is paused.")
        }
        recovery.offer(acceptor)
        // A connection being checked on the older listener gives way to the newer one.
        handshaking.withLock { $0 }?.shutdown()
    }

    /// QMP `migrate-pause` on the destination: the connection is shut, and the load pauses.
    public func pause() throws(MigrationError) {
        guard status.isPostcopyConnected else {
            throw .invalidState("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")
        }
        recovery.reason = "Postcopy migration is paused by the user"
        link.shutdown()
        preempt.withLock { $0 }?.channel.shutdown()
    }

    /// Why the load is paused, while it is.
    public var pauseReason: String? { status == .postcopyPaused ? recovery.reason : nil }

    /// After `error` on the main channel: rethrows it unless the guest runs here
    /// on a postcopy that can go on; otherwise pauses until a new connection is
    /// made, and returns its reader, positioned after its `resume` frame.
    func pauseUntilRecovered(after error: MigrationError, plan: ChannelPlan?, migrationID: [UInt8]) throws(MigrationError) -> FrameReader {
        guard let load = postcopy.withLock({ $0 }), let plan, load.failure == nil, error != .cancelled, !recovery.isAbandoned else {
            throw error
        }
        let cause = preempt.withLock({ $0 })?.failure ?? error
        // Set already when `migrate-pause` broke it.
        if recovery.reason == nil { recovery.reason = "\(cause)" }
        enterPause(load, "the connection broke")
        while true {
            guard let acceptor = recovery.take() else { throw .cancelled }
            do {
                let reader = try reconnect(acceptor, plan: plan, migrationID: migrationID, load: load)
                recovery.reason = nil
                // A `migrate-recover` that came too late to matter leaves no listener open.
                recovery.dropPending()
                return reader
            } catch {
                recovery.release(acceptor)
                if let failure = load.failure { throw failure }
                if recovery.isAbandoned { throw error }
                // A listener replaced by a newer `migrate-recover` is no failure to report.
                if !recovery.replaced { recovery.reason = "the recovery failed: \(error)" }
                enterPause(load, "the recovery failed")
            }
        }
    }

    /// Into `postcopy-paused`: the preempt receiver stops first (nothing is gathered
    /// once the partial huge pages go), the load drops them, the connection retires.
    private func enterPause(_ load: PostcopyLoad, _ why: String) {
        let receiver = preempt.withLock { p in
            defer { p = nil }
            return p
        }
        receiver?.abort()
        // The first connection's listener has nothing more to take (the preempt channel
        // comes again through the recovery's): closed, so `migrate-recover` may listen
        // on the same address, as QEMU lets it.
        acceptor?.close()
        // A pause is a connection lost; a reconnection refused before it was taken is not another.
        load.pause(counting: status != .postcopyPaused)
        link.retireCurrent(why)
        setStatus(.postcopyPaused)
    }

    /// Accepts the source's new main channel, checks that it resumes this
    /// migration, connects the preempt channel again, and tells the source
    /// which pages are here; the requests still waiting are asked again.
    private func reconnect(_ acceptor: any ChannelAcceptor, plan: ChannelPlan, migrationID: [UInt8],
                           load: PostcopyLoad) throws(MigrationError) -> FrameReader {
        let channel: any ByteChannel
        do { channel = try acceptor.accept(timeout: nil) } catch { throw .channel(error) }
        // Checked within the channel timeout, and shut by a newer migrate-recover or a quit.
        handshaking.withLock { $0 = channel }
        defer { handshaking.withLock { $0 = nil } }
        if recovery.replaced {
            channel.close()
            throw .cancelled
        }
        let watchdog = HandshakeWatchdog(channel: channel, limit: channelTimeout)
        defer { watchdog.disarm() }
        var reader = FrameReader(channel: channel)
        do throws(MigrationError) {
            let identity = try reader.readStreamHeader()
            guard identity.role == .main else {
                throw .stream(.unexpectedFrame("the recovered connection opened as the \(identity), not the main channel"))
            }
            guard identity.migrationID == migrationID else {
                throw .stream(.unexpectedFrame("the recovered connection belongs to another migration"))
            }
            var payload: [UInt8] = []
            let header = try reader.next(into: &payload)
            guard header.kind == .resume else {
                throw .stream(.unexpectedFrame("a recovered connection must open with a resume frame, not a frame of kind \(header.kind.rawValue)"))
            }
            let announced: ChannelPlan
            do { announced = try ChannelPlan(decoding: payload) } catch { throw .stream(error) }
            let expected = ChannelPlan(multifd: 0, preempt: plan.preempt, preemptRequests: plan.preemptRequests)
            guard announced == expected else {
                let requests = { (p: ChannelPlan) in p.preemptRequests ? " with page requests on its way back" : "" }
                throw .stream(.unexpectedFrame("the recovered connection announces \(announced.multifd) multifd channel(s) and "
                                               + "\(announced.preempt ? "a" : "no") preempt channel\(requests(announced)); the migration had "
                                               + "\(plan.preempt ? "a" : "no") preempt channel\(requests(plan))"))
            }
        } catch {
            channel.close()
            throw error
        }
        watchdog.disarm()
        // The link first: a migrate-pause from now on shuts the new connection.
        link.replace(with: channel)
        setStatus(.postcopyRecover)
        if plan.preempt { try startPreempt(migrationID: migrationID, from: acceptor, requestsBack: plan.preemptRequests) }
        recovery.release(acceptor)
        if let failure = load.failure { throw failure }
        for (block, words) in load.receivedWords.enumerated() {
            try link.send(.receivedBitmap(block: UInt16(block), words: words))
        }
        setStatus(.postcopyActive)
        // The requests the break may have lost (QEMU: migrate_send_rp_req_pages_pending).
        for request in load.outstandingRequests {
            link.ask(block: request.block, offset: request.offset, length: request.length)
        }
        return reader
    }
}
