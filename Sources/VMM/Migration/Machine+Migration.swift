import Foundation
import HostThreads
import Migration
import MigrationProtocol
import QMP
import Transport

extension Machine {
    /// What both sides of a migration must agree on.
    var migrationConfiguration: MigrationConfiguration {
        MigrationConfiguration(blocks: RAMMigration.layout(of: memory.blocks), vcpuCount: UInt32(vcpus.count))
    }

    /// The state sections besides RAM, in load order: run state, in-kernel
    /// platform devices, each vCPU, the UART.
    func migratableDevices(global: GlobalStateMigratable) -> [any Migratable] {
        [global, PlatformMigratable(vm)] + vcpus.map { VCPUMigratable($0) } + [SerialMigratable(serial)]
            + (balloon.map { [BalloonMigratable($0)] } ?? [])
    }

    // MARK: source

    /// Starts migrating this machine to `uri` on a thread of its own (QMP `migrate`).
    /// Errors found at once (a bad URI, a migration already running, a machine
    /// that cannot migrate) are thrown; later ones end the migration `failed`,
    /// with the source guest running on unless the destination may already run it.
    public func startMigration(to text: String) throws(QMPError) {
        try startMigration(to: text, protection: { $0 })
    }

    /// `startMigration`, with what a background snapshot's write protection
    /// becomes (tests wrap it to show what a broken ordering does).
    func startMigration(to text: String, protection wrap: (any WriteProtection) -> any WriteProtection) throws(QMPError) {
        let uri: MigrationURI
        do { uri = try MigrationURI(parsing: text) } catch { throw .generic(error.description) }
        let current = state
        switch current {
        case .running, .paused, .postmigrate: break
        case let other: throw .generic("The VM cannot be migrated in state '\(other.rawValue)'")
        }
        // The connect happens on the migration thread: QMP stays responsive, and
        // migrate_cancel abandons a connect that hangs.
        let (capabilities, parameters) = (migrationCapabilities, migrationParameters)
        let opener: any ChannelOpener
        if capabilities.mappedRAM {
            guard case .file(let path, let offset) = uri else { throw .generic("Mapped-ram migration requires a file: URI") }
            // QEMU 10 takes the parameter and refuses the migration, with this text.
            if parameters.multifdCompression != .none { throw .generic("Cannot use compression with mapped-ram") }
            let direct = parameters.directIO && capabilities.multifd
            if parameters.directIO && !direct {
                warn("direct-io is ignored: it takes effect with mapped-ram and multifd (as in QEMU)")
            }
            opener = MappedRAMFileOpener(path: path, offset: offset, direct: direct, descriptors: descriptors)
        } else {
            if capabilities.multifd {
                switch uri {
                case .tcp, .unix: break
                case .file, .fd, .fdName: throw .generic("Migration requires multi-channel URIs (e.g. tcp)")
                }
            }
            if parameters.directIO { warn("direct-io is ignored: it takes effect with mapped-ram and multifd (as in QEMU)") }
            // fd:NAME: refused now if nothing has that name; the descriptor is taken when the migration opens it.
            if case .fdName(let name) = uri, !descriptors.hasNamed(name) { throw .generic("File descriptor named '\(name)' has not been found") }
            do { opener = try URIChannelOpener(uri, descriptors: descriptors) } catch { throw .generic("Failed to connect to '\(text)': \(error)") }
        }
        // A background snapshot: RAM's write protection, opened now so that a kernel without it fails `migrate`.
        let protection: (any WriteProtection)?
        do { protection = capabilities.backgroundSnapshot ? wrap(try UserfaultWriteProtection(blocks: memory.blocks)) : nil } catch {
            throw .generic(error.description)
        }
        // The migration is held by this machine's slot: what it holds of the machine is weak,
        // so a machine that migrated can still go away (and give its RAM back).
        let global = GlobalStateMigratable(wasRunning: { [weak self] in self?.wasRunningBeforeSwitchover ?? false })
        // Checked and claimed in one step, so two `migrate`s cannot both start.
        let source = try migration.state.withLock { s throws(QMPError) -> PrecopySource in
            if let last = s.outgoing, !last.status.isFinished {
                throw QMPError.generic("There's a migration process in progress")
            }
            if current == .paused, let last = s.outgoing, last.info.destinationMayRun {
                throw QMPError.generic("The last migration's destination may be running this guest (its answer was lost): "
                                       + "check it, and 'cont' this guest before migrating it again")
            }
            // A guest that arrived by migration may leave again once it has arrived.
            if let incoming = s.incoming, incoming.status.withLock({ $0 }) != .completed {
                throw QMPError.generic("The VM is receiving a migration")
            }
            // A lazy restore is complete for QMP once the guest may run, but its pages are
            // still being placed, where no dirty log sees them: a save now would miss them.
            if let incoming = s.incoming, incoming.destination.withLock({ $0 })?.isLazyRestoreLoading == true {
                throw QMPError.generic("The VM's memory is still being restored (lazy restore): migrate once it is loaded")
            }
            let capabilities = s.capabilities
            // Dirty tracking the last save left on (x-ferry-incremental): continued or restarted.
            let baseline = s.outgoing?.keptTrackingBaseline
            let mappedRAM = capabilities.mappedRAM
                ? MappedRAMSettings(writers: MappedRAMSettings.writers(multifdChannels: capabilities.multifd ? Int(s.parameters.multifdChannels) : nil,
                                                                       direct: s.parameters.directIO),
                                    keepTracking: capabilities.incremental, baseline: capabilities.incremental ? baseline : nil)
                : nil
            let source = PrecopySource(
                .init(opener: opener, configuration: migrationConfiguration,
                      ram: RAMMigration(blocks: memory.blocks, tracker: makeDirtyPageSource(), trackingKeptOn: baseline != nil,
                                        freePageHints: freePageHints(capabilities)),
                      devices: migratableDevices(global: global), vm: MachineMigrationControl(machine: self), mappedRAM: mappedRAM,
                      writeProtection: protection),
                parameters: s.parameters, capabilities: capabilities,
                onStatus: { [weak self] status in if capabilities.events { self?.emit("MIGRATION", data: ["status": .string(status.rawValue)]) } },
                onPass: { [weak self] pass in if capabilities.events { self?.emit("MIGRATION_PASS", data: ["pass": .int(Int64(pass))]) } })
            s.outgoing = source
            return source
        }
        HostThread.start("mig/src/main") { source.run() }
    }

    /// The balloon's free page hints, for a migration with these capabilities:
    /// none with postcopy (a page never sent would stall a faulting vCPU) or a
    /// background snapshot (it saves what the guest had, not a dirty log).
    func freePageHints(_ capabilities: MigrationCapabilities) -> (any FreePageHints)? {
        guard let balloon, balloon.freePageHint, !capabilities.postcopyRAM, !capabilities.backgroundSnapshot else { return nil }
        return BalloonFreePageHints(balloon: balloon, memory: memory)
    }

    /// QMP `migrate_cancel`: the source guest keeps running.  Refused in
    /// postcopy, as QEMU refuses it: the guest already runs on the destination.
    public func cancelMigration() throws(QMPError) {
        guard let outgoing = migration.state.withLock({ $0.outgoing }) else { return }
        if outgoing.status.isPostcopy { throw .generic("Postcopy migration in progress, cannot cancel.") }
        outgoing.cancel()
    }

    // MARK: postcopy recovery

    /// QMP `migrate` with `resume: true`: a paused postcopy reconnects to `text`
    /// (the destination listens there after `migrate-recover`).  QEMU's texts.
    public func resumeMigration(to text: String) throws(QMPError) {
        let uri: MigrationURI
        do { uri = try MigrationURI(parsing: text) } catch { throw .generic(error.description) }
        guard let outgoing = migration.state.withLock({ $0.outgoing }), outgoing.status == .postcopyPaused else {
            throw .generic("Cannot resume if there is no paused migration")
        }
        switch uri {
        case .tcp, .unix, .fd, .fdName: break
        case .file: throw .generic("Postcopy recovery needs the destination's answers: '\(text)' has no return path")
        }
        if case .fdName(let name) = uri, !descriptors.hasNamed(name) { throw .generic("File descriptor named '\(name)' has not been found") }
        let opener: URIChannelOpener
        do { opener = try URIChannelOpener(uri, descriptors: descriptors) } catch { throw .generic("Failed to connect to '\(text)': \(error)") }
        do { try outgoing.resume(through: opener) } catch { throw .generic(error.description) }
    }

    /// QMP `migrate-pause`: breaks a postcopy's connection on whichever side
    /// this machine is; both sides then wait in `postcopy-paused`.
    public func pauseMigration() throws(QMPError) {
        let (outgoing, incoming) = migration.state.withLock { ($0.outgoing, $0.incoming?.destination.withLock { $0 }) }
        do {
            if let outgoing, outgoing.status.isPostcopyConnected { return try outgoing.pause() }
            if let incoming, incoming.status.isPostcopyConnected { return try incoming.pause() }
        } catch { throw .generic(error.description) }
        throw .generic("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")
    }

    /// QMP `migrate-recover`: a paused incoming postcopy listens on `text` for
    /// the source's new connection (`migrate` with `resume: true` there).
    public func recoverIncoming(from text: String) throws(QMPError) {
        guard let incoming = migration.state.withLock({ $0.incoming }), let destination = incoming.destination.withLock({ $0 }),
              destination.status == .postcopyPaused else {
            throw .generic("Migrate recover can only be run when postcopy is paused.")
        }
        let uri: MigrationURI
        do { uri = try MigrationURI(parsing: text) } catch { throw .generic(error.description) }
        switch uri {
        case .tcp, .unix, .fd, .fdName: break
        case .file: throw .generic("Postcopy recovery needs a connection to the source: '\(text)' is a file")
        }
        let listener: IncomingListener
        do { listener = try Transport.listen(uri, descriptors: descriptors) } catch { throw .generic("Failed to listen on '\(text)': \(error)") }
        let limit = migration.state.withLock { $0.parameters.inactivityLimit }
        let inactivity: Duration? = limit == 0 ? nil : .milliseconds(Int64(limit))
        do { try destination.recover(from: LimitedAcceptor(listener: listener, inactivity: inactivity)) } catch {
            throw .generic(error.description)
        }
    }

    /// QMP `migrate-start-postcopy`, with QEMU's texts.
    public func startPostcopy() throws(QMPError) {
        guard migrationCapabilities.postcopyRAM else {
            throw .generic("Enable postcopy with migrate_set_capability before the start of migration")
        }
        guard let outgoing = migration.state.withLock({ $0.outgoing }) else {
            throw .generic("Postcopy must be started after migration has been started")
        }
        do { try outgoing.startPostcopy() } catch { throw .generic(error.description) }
    }

    /// The last outgoing migration's state, for tests and the demo.
    public var outgoingMigration: MigrationInfo? { migration.state.withLock { $0.outgoing }?.info }

    // MARK: destination

    /// Starts listening for an incoming migration on `uri` (`--incoming URI`
    /// or QMP `migrate-incoming`).  The stream is loaded on a thread; the
    /// guest then runs, or `onFailure` is told why not.
    /// With `autostart` false (`-S`), the guest stays paused after the load until `cont`.
    public func startIncoming(from text: String, autostart: Bool = true,
                              onFailure: @escaping @Sendable (String) -> Void) throws(QMPError) {
        guard isIncoming else { throw .generic("Guest is not in the 'inmigrate' state: start with --incoming to receive a migration") }
        let uri: MigrationURI
        do { uri = try MigrationURI(parsing: text) } catch { throw .generic(error.description) }
        let incoming: MigrationSlot.Incoming = try migration.state.withLock { s throws(QMPError) in
            if let current = s.incoming, current.status.withLock({ $0 }) != .failed {
                throw QMPError.generic("The incoming migration has already been started")
            }
            // A load that failed after the switch to postcopy leaves a guest that ran here, on
            // RAM still registered for the pages it never got: a new load would write into it
            // (and dropping the old one would hand its waiting vCPUs zero pages).  QEMU refuses
            // every second start.
            if let current = s.incoming, current.destination.withLock({ $0 })?.switchedToPostcopy == true {
                throw QMPError.generic("The incoming migration failed in postcopy, after this guest ran: "
                                       + "restart the process to receive another migration")
            }
            let incoming: MigrationSlot.Incoming
            // A mapped-ram file is restored as one even without the capability (`--incoming
            // file:` cannot set it): the file says what it is.  Ferry's leniency; QEMU refuses.
            if s.capabilities.mappedRAM || MigrationFile.isMappedRAM(uri, descriptors: descriptors) {
                guard case .file(let path, let offset) = uri else { throw QMPError.generic("Mapped-ram migration requires a file: URI") }
                let direct = s.parameters.directIO && s.capabilities.multifd
                let file: MigrationFile
                do { file = try MigrationFile.open(path: path, writing: false, direct: direct, base: offset, descriptors: descriptors) } catch {
                    throw QMPError.generic("Failed to open '\(text)': \(error)")
                }
                if s.capabilities.lazyRestore, let backend = memory.blocks.first?.mapping.backend,
                   !UserfaultPagePlacement.supported(backend: backend) {
                    throw QMPError.generic("Capability 'x-ferry-lazy-restore' needs userfaultfd on \(backend.rawValue) memory, which this kernel lacks")
                }
                incoming = MigrationSlot.Incoming(file: file, uri: uri,
                                                  readers: s.capabilities.multifd ? Int(s.parameters.multifdChannels) : 1)
            } else {
                if s.capabilities.lazyRestore {
                    throw QMPError.generic("Capability 'x-ferry-lazy-restore' restores a mapped-ram file: it needs a file: URI")
                }
                let listener: IncomingListener
                do { listener = try Transport.listen(uri, descriptors: descriptors) } catch { throw .generic("Failed to listen on '\(text)': \(error)") }
                incoming = MigrationSlot.Incoming(listener: listener)
            }
            s.incoming = incoming
            return incoming
        }
        HostThread.start("ferry-incoming") { [self] in receive(incoming, autostart: autostart, onFailure: onFailure) }
    }

    private func receive(_ incoming: MigrationSlot.Incoming, autostart: Bool, onFailure: @Sendable (String) -> Void) {
        let events = migration.state.withLock { $0.capabilities.events }
        // Weak: the machine's slot holds `incoming`, which holds the load, which holds this.
        let setStatus: @Sendable (MigrationStatus) -> Void = { [weak self, weak incoming] status in
            incoming?.status.withLock { $0 = status }
            if events { self?.emit("MIGRATION", data: ["status": .string(status.rawValue)]) }
        }
        // A failure is published below, once its reason is recorded: `failed` is never seen without it.
        let fromDestination: @Sendable (MigrationStatus) -> Void = { status in if status != .failed { setStatus(status) } }
        let global = GlobalStateMigratable(wasRunning: { false })
        // Only the first load finds RAM as it was created, all zero: after a failed
        // one, pages it wrote are still there, and every zero record must be applied.
        let startsZero = migration.state.withLock { s in
            defer { s.incomingRAMTouched = true }
            return !s.incomingRAMTouched
        }
        let limit = migration.state.withLock { $0.parameters.inactivityLimit }
        let destination: MigrationDestination
        do {
            if let (file, readers) = incoming.mappedRAM {
                // A mapped-ram file: its pages in parallel, then its device state; or, lazily,
                // the device state, then the pages while the guest runs.
                let blocks = memory.blocks
                let lazy = migration.state.withLock { $0.capabilities.lazyRestore }
                destination = MigrationDestination(
                    channel: file, configuration: migrationConfiguration,
                    ram: RAMMigration(blocks: memory.blocks, tracker: nil, destinationStartsZero: startsZero),
                    devices: migratableDevices(global: global), mappedRAM: (file, readers),
                    placement: { [preallocated = configuration.preallocate] () throws(MigrationError) in
                        try UserfaultPagePlacement(blocks: blocks, leavesZeroUnits: !preallocated)
                    },
                    lazyRestore: lazy,
                    onLazyFailure: { [weak self, weak incoming] error in
                        // The guest cannot go on without the page it waits for: it stops (or never
                        // starts), saying why.  (Weak: the slot holds `incoming`, which holds this load.)
                        incoming?.error.withLock { $0 = "\(error)" }
                        self?.lazyRestoreFailed("lazy restore failed: \(error)")
                    },
                    onStatus: fromDestination)
                incoming.destination.withLock { $0 = destination }
                // A quit since the file was opened found no load to stop: this one stops now.
                if !isLive { destination.abort() }
                try destination.run()
                finishIncoming(run: autostart && global.sourceWasRunning == true)
                destination.complete()
                return
            }
            guard let listener = incoming.listener else { throw MigrationError.invalidState("no listener") }
            let channel = try listener.accept(timeout: nil)
            // A source that goes silent fails the load instead of stalling it forever
            // (a socket's receive timeout: no extra system call per read).
            // The limit is on the whole migration: the main channel is quiet while a
            // pass's pages arrive on multifd channels, so they count their bytes together.
            let inactivity: Duration? = limit == 0 ? nil : .milliseconds(Int64(limit))
            let activity = ChannelActivity()
            channel.limitInactivity(inactivity, sharing: activity)
            // A socket listener stays open for the multifd channels the source may announce.
            let acceptor: (any ChannelAcceptor)?
            switch incoming.address {
            case .tcp, .unix: acceptor = LimitedAcceptor(listener: listener, inactivity: inactivity, activity: activity)
            case .file, .fd, .fdName:
                listener.close()
                acceptor = nil
            }
            // Postcopy's page placement, made at the switch (a userfaultfd only when one is needed).
            let blocks = memory.blocks
            // With -mem-prealloc every page stays backed: a zero huge page is placed, not left.
            let leavesZeroUnits = !configuration.preallocate
            let placement: @Sendable () throws(MigrationError) -> any PagePlacement = { () throws(MigrationError) in
                try UserfaultPagePlacement(blocks: blocks, leavesZeroUnits: leavesZeroUnits)
            }
            let (postcopyExpected, blocktime) = migration.state.withLock { ($0.capabilities.postcopyRAM, $0.capabilities.postcopyBlocktime) }
            // postcopy-blocktime: the vCPUs' threads, read at the switch (they run by then).
            var blocktimeThreads: (@Sendable () -> [Int32])?
            if blocktime {
                blocktimeThreads = { @Sendable [weak self] in self?.vcpus.map(\.threadID) ?? [] }
            }
            destination = MigrationDestination(
                channel: channel, acceptor: acceptor, configuration: migrationConfiguration,
                ram: RAMMigration(blocks: memory.blocks, tracker: nil, destinationStartsZero: startsZero,
                                  allocateAhead: configuration.allocatesAheadOnIncoming(postcopyExpected: postcopyExpected)),
                devices: migratableDevices(global: global), placement: placement,
                onPostcopy: { [weak self] in
                    // The guest runs here from the switch on; its missing pages follow.
                    self?.finishIncoming(run: autostart && global.sourceWasRunning == true)
                },
                blocktimeVCPUThreads: blocktimeThreads,
                onStatus: fromDestination)
            incoming.destination.withLock { $0 = destination }
            // A quit between the accept and here found no load to stop: this one stops now.
            if !isLive { destination.abort() }
            try destination.run()
        } catch {
            incoming.error.withLock { $0 = "\(error)" }
            setStatus(.failed)
            onFailure("load of migration failed: \(error)")
            return
        }
        if !destination.switchedToPostcopy { finishIncoming(run: autostart && global.sourceWasRunning == true) }
        destination.complete()
    }

    /// A lazy restore cannot read a page: a guest that runs stops; one not yet
    /// started (or paused) is put in `internal-error`, so it never runs on without it.
    func lazyRestoreFailed(_ reason: String) {
        let wasRunning = runState.withLock { state -> Bool? in
            switch state {
            case .running: return true
            case .inmigrate, .paused, .prelaunch:
                state = .internalError
                return false
            default: return nil      // quit, or stopped otherwise already
            }
        }
        if wasRunning == true { guestStopped(.internalError, reason: reason) }
    }

    /// The migration is loaded: the guest runs here if it ran on the source.
    /// A lazy restore that failed already leaves it in `internal-error`.
    func finishIncoming(run: Bool) {
        let next: RunState = run ? .running : .paused
        let moved = runState.withLock { state -> Bool in
            // Quit meanwhile: the machine is gone, and its guest never runs.
            guard state != .internalError, state != .shutdown else { return false }
            state = next
            return true
        }
        if moved && run {
            control.resume()
            emit("RESUME")
        }
    }

    /// The destination's status for `query-migrate` (nil on a machine that is not incoming).
    var incomingMigration: MigrationSlot.Incoming? { migration.state.withLock { $0.incoming } }

    // MARK: settings

    public func setMigrationParameters(_ arguments: [String: JSONValue]) throws(QMPError) {
        try migration.state.withLock { s throws(QMPError) in
            var parameters = s.parameters
            for (name, value) in arguments.sorted(by: { $0.key < $1.key }) {
                do throws(MigrationError) {
                    switch value {
                    case .int(let number): try parameters.set(name, to: number)
                    case .uint(let number): try parameters.set(name, unsigned: number)
                    case .string(let text): try parameters.set(name, text: text)
                    case .bool(let flag): try parameters.set(name, flag: flag)
                    default: throw MigrationParameters.wrongType(name)
                    }
                } catch { throw QMPError.generic("\(error)") }
            }
            do throws(MigrationError) {
                try parameters.check()
                try s.capabilities.check(with: parameters)
            } catch { throw QMPError.generic("\(error)") }
            s.parameters = parameters
            // As in QEMU, a running migration takes the new values at once.
            if let current = s.outgoing, !current.status.isFinished { current.update(parameters) }
        }
    }

    public func setMigrationCapabilities(_ list: [(String, Bool)]) throws(QMPError) {
        try migration.state.withLock { s throws(QMPError) in
            if let current = s.outgoing, !current.status.isFinished {
                throw QMPError.generic("There's a migration process in progress")
            }
            var capabilities = s.capabilities
            for (name, enabled) in list {
                do { try capabilities.set(name, to: enabled) } catch { throw QMPError.generic("\(error)") }
            }
            do { try capabilities.check(with: s.parameters) } catch { throw QMPError.generic("\(error)") }
            if capabilities.backgroundSnapshot && !s.capabilities.backgroundSnapshot,
               !UserfaultWriteProtection.supported(backend: configuration.backend) {
                throw QMPError.generic("Background-snapshot is not supported by host kernel")
            }
            // The destination learns the channels from the source, but takes QEMU's rules as
            // they are: neither may be turned on once incoming has started (off, or left on, may).
            if capabilities.multifd && !s.capabilities.multifd && s.incoming != nil {
                throw QMPError.generic("Multifd must be set before incoming starts")
            }
            if capabilities.postcopyPreempt && !s.capabilities.postcopyPreempt && s.incoming != nil {
                throw QMPError.generic("Postcopy preempt must be set before incoming starts")
            }
            s.capabilities = capabilities
        }
    }

    var migrationParameters: MigrationParameters { migration.state.withLock { $0.parameters } }
    var migrationCapabilities: MigrationCapabilities { migration.state.withLock { $0.capabilities } }
}

/// The destination's listener for the channels after the main one, each with
/// the same inactivity limit, counted over all of them (`activity`).
struct LimitedAcceptor: ChannelAcceptor {
    let listener: IncomingListener
    let inactivity: Duration?
    var activity = ChannelActivity()

    func accept(timeout: Duration?) throws(ChannelError) -> any ByteChannel {
        let channel = try listener.accept(timeout: timeout)
        channel.limitInactivity(inactivity, sharing: activity)
        return channel
    }

    func acceptQuiet(timeout: Duration?) throws(ChannelError) -> any ByteChannel { try listener.accept(timeout: timeout) }

    func close() { listener.close() }

    func interrupt() { listener.interrupt() }
}

/// The source engine's handle on the machine.
/// Weak: the machine's slot holds the migration, and a machine that is gone has nothing to stop or resume.
struct MachineMigrationControl: MigrationVMControl {
    weak var machine: Machine?

    init(machine: Machine) { self.machine = machine }

    func stopForSwitchover() -> Bool { machine?.stopForSwitchover() ?? false }
    func migrationCompleted() { machine?.runState.withLock { $0 = .postmigrate } }
    func resumeAfterFailedSwitchover(wasRunning: Bool) { machine?.resumeAfterFailedSwitchover(wasRunning: wasRunning) }
    func holdAfterUncertainSwitchover() { machine?.runState.withLock { $0 = .paused } }
    func setThrottle(percent: Int) { machine?.setThrottle(percent: percent) }
}

extension Machine {
    /// A warning on standard error, as QEMU's `warn_report` gives one.
    func warn(_ message: String) {
        FileHandle.standardError.write(Data("ferry: warning: \(message)\n".utf8))
    }
}
