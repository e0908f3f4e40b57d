import MigrationProtocol
import Synchronization

/// The destination side: reads a stream, checks it against this VM's
/// configuration before a page is written, applies page frames to RAM and
/// sections to the object that owns each name, and answers on the return path.
///
/// Every field is validated (the frame layer checks lengths and checksums,
/// page records are checked against the RAM layout, sections must name a known
/// object and arrive once each), so a hostile stream gets an error, never a
/// write outside guest RAM.  The VM is resumed by the caller once `run` returns.
public final class MigrationDestination: Sendable {
    /// The connection to the source: the main channel and the return path (a postcopy recovery replaces it).
    let link: DestinationLink
    var channel: any ByteChannel { link.channel }
    var returnPath: ReturnPathWriter { link.returnPath }
    /// Where the multifd channels come from (a socket listener); nil: none may.
    let acceptor: (any ChannelAcceptor)?
    let receivers = Mutex<MultifdReceivers?>(nil)
    /// How long the multifd channels the main channel announces may take to arrive, all together.
    public static let channelArrivalTimeout: Duration = .seconds(10)
    let configuration: MigrationConfiguration
    let ram: RAMMigration
    let devices: [String: any Migratable]
    let onStatus: @Sendable (MigrationStatus) -> Void
    let statusStorage = Mutex(MigrationStatus.none)
    /// Set when two devices claim one section name: the load refuses to start.
    let duplicateSection: String?

    let channelTimeout: Duration
    /// A mapped-ram restore: `channel` is this file, and its pages are read by this many threads first.
    let mappedRAM: (file: any PageFile, readers: Int)?
    /// Where pages go after a switch to postcopy (nil: this destination refuses one).
    /// Makes the placement at the switch (a userfaultfd is opened only for a postcopy).
    let makePlacement: (@Sendable () throws(MigrationError) -> any PagePlacement)?
    /// Told once the switch to postcopy is made: the guest may run now.
    let onPostcopy: @Sendable () -> Void
    /// With capability `postcopy-blocktime`: the vCPUs' TIDs (by index) at the switch, whose waits are measured.
    let blocktimeVCPUThreads: (@Sendable () -> [Int32])?
    /// After the switch to postcopy: the pages still to come.
    let postcopy = Mutex<PostcopyLoad?>(nil)
    /// Whether the switch was made, and a completed postcopy's figures (its load let go).
    let postcopyRecord = Mutex<(switched: Bool, statistics: PostcopyStatistics?)>((false, nil))
    /// The `postcopy-preempt` channel's loader, when the plan announced one.
    let preempt = Mutex<PreemptReceiver?>(nil)
    /// With `lazyRestore`: the mapped-ram image read at the start, then the restore serving it.
    let lazyRestore: Bool
    let lazyImage = Mutex<MappedRAMImage?>(nil)
    let lazy = Mutex<LazyRestore?>(nil)
    let onLazyFailure: @Sendable (MigrationError) -> Void
    /// A paused postcopy's way back: `migrate-recover`'s listener, handed to the loading thread.
    let recovery = RecoveryWait<any ChannelAcceptor>(close: { $0.close() }, interrupt: { $0.interrupt() })
    /// A recovered connection being checked (its header and `resume` frame): shut by a newer
    /// `migrate-recover` or by `abort`, so neither waits on a peer that says nothing.
    let handshaking = Mutex<(any ByteChannel)?>(nil)
    /// `abort()` came: a load not yet started never starts (a file's shutdown stops nothing).
    let aborted = Mutex(false)

    /// `mappedRAM`: restore from a mapped-ram file (`channel` must be that
    /// file): its pages first, in parallel, then the device state it holds.
    /// With `lazyRestore` (and `placement`) the device state only: the pages
    /// follow once the guest runs (`LazyRestore`), and `onLazyFailure` is told
    /// if one cannot be read.
    public init(channel: any ByteChannel, acceptor: (any ChannelAcceptor)? = nil, configuration: MigrationConfiguration,
                ram: RAMMigration, devices: [any Migratable], channelTimeout: Duration = MigrationDestination.channelArrivalTimeout,
                mappedRAM: (file: any PageFile, readers: Int)? = nil,
                placement: (@Sendable () throws(MigrationError) -> any PagePlacement)? = nil, onPostcopy: @escaping @Sendable () -> Void = {},
                blocktimeVCPUThreads: (@Sendable () -> [Int32])? = nil,
                lazyRestore: Bool = false, onLazyFailure: @escaping @Sendable (MigrationError) -> Void = { _ in },
                onStatus: @escaping @Sendable (MigrationStatus) -> Void) {
        link = DestinationLink(channel: channel)
        self.lazyRestore = lazyRestore && mappedRAM != nil
        self.onLazyFailure = onLazyFailure
        self.makePlacement = placement
        self.onPostcopy = onPostcopy
        self.blocktimeVCPUThreads = blocktimeVCPUThreads
        self.mappedRAM = mappedRAM
        self.acceptor = acceptor
        self.channelTimeout = channelTimeout
        self.configuration = configuration
        self.ram = ram
        self.devices = Dictionary(devices.map { ($0.sectionName, $0) }, uniquingKeysWith: { first, _ in first })
        duplicateSection = PrecopySource.duplicateSectionName(devices)
        self.onStatus = onStatus
    }

    public var status: MigrationStatus { statusStorage.withLock { $0 } }

    /// Whether the switch to postcopy was made (the guest may be running here).
    public var switchedToPostcopy: Bool { postcopyRecord.withLock { $0.switched } }

    /// A postcopy that failed or is abandoned (the machine quits): its fault
    /// thread stops and RAM becomes ordinary memory, so no vCPU waits any more
    /// for a page that will never come.  Whatever it then reads is not the
    /// guest's: only for a guest that is being thrown away.
    public func abandonPostcopy() {
        guard let load = postcopy.withLock({ $0 }) else { return }
        load.stop()
        try? load.placement.releaseAll()
    }

    /// The machine goes away (`quit`): the load stops as if the process had
    /// exited: its connections are shut (the source sees them close), and a
    /// postcopy is abandoned.
    public func abort() {
        aborted.withLock { $0 = true }
        lazy.withLock { $0 }?.abandon()
        recovery.abandon()
        handshaking.withLock { $0 }?.shutdown()
        channel.shutdown()
        preempt.withLock { $0 }?.channel.shutdown()
        receivers.withLock { $0 }?.abort(.cancelled)
        abandonPostcopy()
    }

    /// A lazy restore's figures, once its guest may run.
    public var lazyRestoreStatistics: LazyRestoreStatistics? { lazy.withLock { $0 }?.statistics }

    /// A lazy restore still placing pages: RAM is not all there yet, and what it
    /// places is in no dirty log (a migration of this guest must wait).
    public var isLazyRestoreLoading: Bool { lazy.withLock { $0 }.map { !$0.isComplete } ?? false }

    /// The postcopy figures, once switched.
    public var postcopyStatistics: PostcopyStatistics? {
        postcopy.withLock { $0 }?.statistics ?? postcopyRecord.withLock { $0.statistics }
    }

    /// Loads the whole stream.  Throws on the first problem (after telling the
    /// source on the return path); on success the source has been told too, and
    /// the caller, once its guest is ready, reports `completed` with `complete()`.
    public func run() throws(MigrationError) {
        setStatus(.setup)
        do {
            defer { ram.endLoad() }     // before the guest can run, whatever happened
            try load()
        } catch {
            // A multifd channel's failure is the cause; the main channel was shut because of it.
            let receivers = self.receivers.withLock { $0 }
            var cause = receivers?.failure ?? preempt.withLock({ $0 })?.failure ?? postcopy.withLock({ $0 })?.failure ?? error
            if let postcopy = postcopy.withLock({ $0 }) {
                // The guest runs here on what it has; what is missing can no longer come.
                // Its vCPUs that wait on a missing page go on waiting.
                postcopy.stop()
                cause = .state("the postcopy migration failed after the guest started here (\(cause)); it cannot go on, and pages it has not received will never arrive")
            }
            receivers?.abort(cause)
            receivers?.close()
            preempt.withLock { $0 }?.abort()
            acceptor?.close()
            recovery.abandon()
            if channel.hasReturnPath {
                try? returnPath.send(.failed(cause.description))
                try? returnPath.send(.shut)
            }
            setStatus(.failed)
            channel.close()
            throw cause
        }
        receivers.withLock { $0 }?.close()
        preempt.withLock { $0 }?.abort()       // finished: this only closes it
        acceptor?.close()
        recovery.abandon()      // no recovery after the end: a listener offered meanwhile is closed
        if channel.hasReturnPath {
            do { try returnPath.send(.loaded) } catch {
                // After a postcopy the guest runs here with every page: it is complete,
                // whether or not the source hears so (its end frames were all here).
                if !switchedToPostcopy {
                    setStatus(.failed)
                    channel.close()
                    throw error
                }
            }
            try? returnPath.send(.shut)     // the source has its answer; a source already gone changes nothing
        }
        // A lazy restore reads its pages from the file (the channel) from now on; it closes it.
        if lazy.withLock({ $0 }) == nil { channel.close() }
    }

    /// The VM runs (or waits, with -S) on the loaded state: the migration is complete.
    public func complete() { setStatus(.completed) }

    func load() throws(MigrationError) {
        guard !aborted.withLock({ $0 }) else { throw .cancelled }
        if let name = duplicateSection { throw .invalidState("two pieces of state claim section '\(name)'") }
        if let (file, readers) = mappedRAM {
            // Every offset checked before a page is read; then the pages, in parallel.
            let header: MappedRAMHeader
            if lazyRestore {
                let image = try MappedRAMImage(file: file, blocks: configuration.blocks)
                setStatus(.active)
                guard makePlacement != nil else { throw .invalidState("a lazy restore needs userfaultfd page placement") }
                lazyImage.withLock { $0 = image }
                header = image.header
            } else {
                // Active once the header is checked (the tables are checked while pages are
                // read): a table that does not match fails the restore from active.
                header = try MappedRAMImage.readHeader(of: file, for: configuration.blocks)
                setStatus(.active)
                try ram.loadMappedRAM(header, from: file, readers: readers)
            }
            file.seek(to: header.stateOffset)
        }
        var reader = FrameReader(channel: channel)
        let identity = try reader.readStreamHeader()
        guard identity.role == .main else {
            throw .stream(.unexpectedFrame("the first connection is the \(identity), not the main channel"))
        }
        var payload: [UInt8] = []
        let first = try reader.next(into: &payload)
        guard first.kind == .configuration else {
            throw .stream(.unexpectedFrame("the stream must open with its configuration, not a frame of kind \(first.kind)"))
        }
        do { try configuration.check(incoming: try MigrationConfiguration(decoding: payload)) } catch { throw .stream(error) }
        setStatus(.active)
        var stream = StreamState()
        while true {
            do {
                try loadFrames(from: &reader, into: &stream, migrationID: identity.migrationID)
                return
            } catch {
                // After the switch to postcopy the guest runs here: a break pauses, it never fails.
                reader = try pauseUntilRecovered(after: error, plan: stream.plan, migrationID: identity.migrationID)
            }
        }
    }

    /// What the main stream's frames have set up so far (kept across a postcopy recovery).
    struct StreamState: ~Copyable {
        var loaded = Set<String>()
        var plan: ChannelPlan?
        var scratch = PageLoadScratch()
    }

    /// Loads the main channel's frames until its `end`.
    func loadFrames(from reader: inout FrameReader, into stream: inout StreamState, migrationID: [UInt8]) throws(MigrationError) {
        var payload: [UInt8] = []
        while true {
            let header = try reader.next(into: &payload)
            if stream.plan == nil && [.pages, .section, .end].contains(header.kind) {
                throw .stream(.unexpectedFrame("a frame of kind \(header.kind.rawValue) before the channel plan"))
            }
            switch header.kind {
            case .pages:
                guard stream.plan?.mappedRAM != true else { throw .stream(.unexpectedFrame("a pages frame in a mapped-ram file's device state")) }
                guard stream.plan?.multifd == 0 else { throw .stream(.unexpectedFrame("pages on the main channel of a multifd migration")) }
                try ram.loadPages(header, payload: payload, from: &reader, scratch: &stream.scratch)
            case .residency:
                try ram.loadResidency(payload)
            case .channels:
                guard stream.plan == nil else { throw .stream(.unexpectedFrame("a second channel plan")) }
                let announced: ChannelPlan
                do { announced = try ChannelPlan(decoding: payload) } catch { throw .stream(error) }
                stream.plan = announced
                guard announced.mappedRAM == (mappedRAM != nil) else {
                    throw .stream(.unexpectedFrame(announced.mappedRAM
                        ? "the stream says its pages are in a mapped-ram file, but this is not a mapped-ram restore"
                        : "a mapped-ram file's device state without the mapped-ram flag"))
                }
                if announced.multifd > 0 && !announced.mappedRAM { try startReceivers(announced, migrationID: migrationID) }
                if announced.preempt {
                    try startPreempt(migrationID: migrationID, from: acceptor, requestsBack: announced.preemptRequests)
                }
            case .section:
                let section: StateSection
                do { section = try StateSection(decoding: payload) } catch { throw .stream(error) }
                guard let owner = devices[section.name] else {
                    throw .stream(.unexpectedFrame("unknown section '\(section.name)'"))
                }
                guard section.version == owner.sectionVersion else {
                    throw .stream(.unexpectedFrame("section '\(section.name)' has version \(section.version), this Ferry loads \(owner.sectionVersion)"))
                }
                guard stream.loaded.insert(section.name).inserted else {
                    throw .stream(.unexpectedFrame("section '\(section.name)' arrived twice"))
                }
                try owner.load(section)
            case .postcopy:
                guard stream.plan?.multifd == 0, stream.plan?.mappedRAM == false else {
                    throw .stream(.unexpectedFrame("a postcopy switch in a migration with multifd channels or a mapped-ram file"))
                }
                if let missing = devices.keys.sorted().first(where: { !stream.loaded.contains($0) }) {
                    throw .stream(.unexpectedFrame("the switch to postcopy came without section '\(missing)'"))
                }
                try switchToPostcopy(payload)
            case .end:
                // The reader has checked the end's frame count and digest: every frame arrived, in order.
                if let missing = devices.keys.sorted().first(where: { !stream.loaded.contains($0) }) {
                    throw .stream(.unexpectedFrame("the stream ended without section '\(missing)'"))
                }
                // The preempt channel's own end (every page asked for that went there), then
                // after a switch to postcopy: every discarded page must have come back.
                try preempt.withLock { $0 }?.finish()
                if let load = postcopy.withLock({ $0 }) {
                    try load.finish()
                    // Every page is here: the figures are kept, the userfaultfd goes.
                    postcopyRecord.withLock { $0.statistics = load.statistics }
                    ram.endPostcopy()
                    postcopy.withLock { $0 = nil }
                }
                // Every multifd channel's own end, count and digest checked too.
                try receivers.withLock { $0 }?.finish()
                try ram.verifyIntact()
                if let image = lazyImage.withLock({ $0 }), let makePlacement, let (file, readers) = mappedRAM {
                    // Every section loaded: RAM is registered, and the guest may run while it is read.
                    let restore = try LazyRestore(image: image, file: file, placement: try makePlacement(), readers: readers,
                                                  onFailure: onLazyFailure)
                    restore.start()
                    lazy.withLock { $0 = restore }
                }
                return
            case .configuration:
                throw .stream(.unexpectedFrame("a second configuration"))
            case .resume:
                throw .stream(.unexpectedFrame("a resume frame in the middle of a stream (it opens a recovered postcopy connection)"))
            case .sync:
                throw .stream(.unexpectedFrame("a sync frame on the main channel"))
            case .returnMessage:
                throw .stream(.unexpectedFrame("a return-path message on the forward stream"))
            case .invalid:
                throw .stream(.invalidFrameKind(FrameKind.invalid.rawValue))
            }
        }
    }

    /// Accepts the `postcopy-preempt` channel the plan announces and starts loading from it.
    /// With `requestsBack` (the source reads them there) page requests go back on it.
    func startPreempt(migrationID: [UInt8], from acceptor: (any ChannelAcceptor)?, requestsBack: Bool) throws(MigrationError) {
        guard let acceptor, channel.hasReturnPath else {
            throw .stream(.unexpectedFrame("the source announced a postcopy preempt channel, but this destination reads a file or descriptor"))
        }
        let accepted = try PreemptReceiver.accept(migrationID: migrationID, from: acceptor, timeout: channelTimeout)
        let link = self.link
        let receiver = PreemptReceiver(channel: accepted, ram: ram) { _ in
            // Wake the main thread, which waits on its own channel: it fails the load (and says
            // why), or after the switch to postcopy pauses it.
            link.shutdown()
        }
        preempt.withLock { $0 = receiver }
        if requestsBack { link.sendRequests(on: receiver.requests) }
    }

    /// The switch to postcopy: the discarded pages freed, RAM registered for
    /// missing-page faults, the fault thread asking for pages on the return
    /// path; then the guest may run.
    func switchToPostcopy(_ payload: [UInt8]) throws(MigrationError) {
        guard let makePlacement, channel.hasReturnPath else {
            throw .stream(.unexpectedFrame("a switch to postcopy, which this destination cannot take (it needs a return path and userfaultfd)"))
        }
        let link = self.link
        let load = try ram.beginPostcopy(payload, placement: try makePlacement(), vcpuThreads: blocktimeVCPUThreads?(), ask: { block, offset, length in
            // A request that cannot be sent breaks the connection: the load pauses, and asks again after a recovery.
            link.ask(block: block, offset: offset, length: length)
        }, onFailure: { [recovery] error in
            // A fault thread that stopped leaves every later access waiting: the load fails now,
            // paused or not (no recovery can mend it).
            try? link.send(.failed(error.description))
            link.shutdown()
            recovery.abandon()
        })
        postcopy.withLock { $0 = load }
        postcopyRecord.withLock { $0.switched = true }
        setStatus(.postcopyActive)
        onPostcopy()
    }

    /// Accepts and checks the multifd channels the plan announces, and starts loading from them.
    func startReceivers(_ plan: ChannelPlan, migrationID: [UInt8]) throws(MigrationError) {
        guard let acceptor else {
            throw .stream(.unexpectedFrame("the source announced \(plan.multifd) multifd channels, but this destination reads a file or descriptor"))
        }
        let channels = try MultifdReceivers.accept(Int(plan.multifd), migrationID: migrationID, from: acceptor,
                                                   timeout: channelTimeout)
        acceptor.close()
        let link = self.link
        let started = MultifdReceivers(channels: channels, ram: ram, onApplied: { epoch in
            // The source waits for this before it stops the guest (nothing old left in flight then).
            if link.channel.hasReturnPath { try? link.send(.applied(epoch: epoch)) }
        }) { error in
            // Tell the source why, then wake the main thread, which waits on its own channel.
            if link.channel.hasReturnPath { try? link.send(.failed(error.description)) }
            link.shutdown()
        }
        receivers.withLock { $0 = started }
    }

    func setStatus(_ status: MigrationStatus) {
        let changed = statusStorage.withLock { current -> Bool in
            defer { current = status }
            return current != status
        }
        if changed { onStatus(status) }
    }
}
