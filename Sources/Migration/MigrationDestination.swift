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
    let channel: any ByteChannel
    /// The answers to the source (sockets only); shared with a fault thread once postcopy has one.
    let returnPath: ReturnPathWriter
    let configuration: MigrationConfiguration
    let ram: RAMMigration
    let devices: [String: any Migratable]
    let onStatus: @Sendable (MigrationStatus) -> Void
    let statusStorage = Mutex(MigrationStatus.none)
    /// Set when two devices claim one section name: the load refuses to start.
    let duplicateSection: String?

    public init(channel: any ByteChannel, configuration: MigrationConfiguration, ram: RAMMigration,
                devices: [any Migratable],
                onStatus: @escaping @Sendable (MigrationStatus) -> Void) {
        self.channel = channel
        returnPath = ReturnPathWriter(channel: channel)
        self.configuration = configuration
        self.ram = ram
        self.devices = Dictionary(devices.map { ($0.sectionName, $0) }, uniquingKeysWith: { first, _ in first })
        duplicateSection = PrecopySource.duplicateSectionName(devices)
        self.onStatus = onStatus
    }

    public var status: MigrationStatus { statusStorage.withLock { $0 } }

    /// Loads the whole stream.  Throws on the first problem (after telling the
    /// source on the return path); on success the source has been told too, and
    /// the caller, once its guest is ready, reports `completed` with `complete()`.
    public func run() throws(MigrationError) {
        setStatus(.setup)
        do {
            defer { ram.endLoad() }     // before the guest can run, whatever happened
            try load()
        } catch {
            if channel.hasReturnPath {
                try? returnPath.send(.failed(error.description))
                try? returnPath.send(.shut)
            }
            setStatus(.failed)
            channel.close()
            throw error
        }
        if channel.hasReturnPath {
            do { try returnPath.send(.loaded) } catch {
                setStatus(.failed)
                channel.close()
                throw error
            }
            try? returnPath.send(.shut)     // the source has its answer; a source already gone changes nothing
        }
        channel.close()
    }

    /// The VM runs (or waits, with -S) on the loaded state: the migration is complete.
    public func complete() { setStatus(.completed) }

    func load() throws(MigrationError) {
        if let name = duplicateSection { throw .invalidState("two pieces of state claim section '\(name)'") }
        var reader = FrameReader(channel: channel)
        _ = try reader.readStreamHeader()
        var payload: [UInt8] = []
        let first = try reader.next(into: &payload)
        guard first.kind == .configuration else {
            throw .stream(.unexpectedFrame("the stream must open with its configuration, not a frame of kind \(first.kind)"))
        }
        do { try configuration.check(incoming: try MigrationConfiguration(decoding: payload)) } catch { throw .stream(error) }
        setStatus(.active)
        var loaded = Set<String>()
        while true {
            let header = try reader.next(into: &payload)
            switch header.kind {
            case .pages:
                try ram.loadPages(payload)
            case .residency:
                try ram.loadResidency(payload)
            case .section:
                let section: StateSection
                do { section = try StateSection(decoding: payload) } catch { throw .stream(error) }
                guard let owner = devices[section.name] else {
                    throw .stream(.unexpectedFrame("unknown section '\(section.name)'"))
                }
                guard section.version == owner.sectionVersion else {
                    throw .stream(.unexpectedFrame("section '\(section.name)' has version \(section.version), this Ferry loads \(owner.sectionVersion)"))
                }
                guard loaded.insert(section.name).inserted else {
                    throw .stream(.unexpectedFrame("section '\(section.name)' arrived twice"))
                }
                try owner.load(section)
            case .end:
                // The reader has checked the end's frame count and digest: every frame arrived, in order.
                if let missing = devices.keys.sorted().first(where: { !loaded.contains($0) }) {
                    throw .stream(.unexpectedFrame("the stream ended without section '\(missing)'"))
                }
                return
            case .configuration:
                throw .stream(.unexpectedFrame("a second configuration"))
            case .returnMessage:
                throw .stream(.unexpectedFrame("a return-path message on the forward stream"))
            case .invalid:
                throw .stream(.invalidFrameKind(FrameKind.invalid.rawValue))
            }
        }
    }

    func setStatus(_ status: MigrationStatus) {
        statusStorage.withLock { $0 = status }
        onStatus(status)
    }
}
