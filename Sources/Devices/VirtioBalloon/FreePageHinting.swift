/// The device side of free page hinting (virtio-balloon FREE_PAGE_HINT), as
/// QEMU's `hw/virtio/virtio-balloon.c` runs it: a pure state machine.
///
/// After every dirty-bitmap sync with the guest running, the device offers a
/// new command id in its config space (`start`).  The driver echoes the id on
/// the free-page queue, and from then on every free block it reports is a hint
/// (`accepting`).  Before the next sync the device shows STOP (`stop`): hints
/// still in flight are dropped, so a hint only ever clears bits that a sync set
/// before it was reported.  DONE (`finish`) tells the driver it may use the
/// pages it holds again: the guest stopped for the switchover, or the
/// migration ended.
public struct FreePageHinting: Equatable, Sendable {
    public enum Status: UInt8, Sendable {
        /// STOP shown: no hint applies.
        case stopped = 0
        /// A new id shown; hints apply once the driver echoes it.
        case requested = 1
        /// The driver echoed the id: its hints apply.
        case started = 2
        /// DONE shown: the driver returns what it holds.
        case done = 3
    }

    /// VIRTIO_BALLOON_CMD_ID_STOP and _DONE, and QEMU's
    /// VIRTIO_BALLOON_FREE_PAGE_HINT_CMD_ID_MIN: ids count up from just past
    /// it (the first command is 0x80000001, as QEMU's) and wrap back to it.
    public static let stopID: UInt32 = 0
    public static let doneID: UInt32 = 1
    public static let minimumID: UInt32 = 0x8000_0000

    /// STOP from the start, as QEMU's device begins.
    public private(set) var status: Status = .stopped
    /// The id of the current (or last) command.
    public private(set) var commandID: UInt32 = minimumID
    /// Which sync the current command follows: hints under it clear only bits that sync (or an older one) set.
    public private(set) var epoch: UInt64 = 0

    public init() {}

    /// What the config space's `free_page_hint_cmd_id` shows.  Once the driver
    /// has echoed the id the field reads 0, as on QEMU's device (only a config
    /// change makes it meaningful to the driver again).
    public var configCommandID: UInt32 {
        switch status {
        case .stopped, .started: Self.stopID
        case .requested: commandID
        case .done: Self.doneID
        }
    }

    /// Whether a free block the driver reports now is a hint.
    public var accepting: Bool { status == .started }

    /// A sync (number `epoch`) happened with the guest running: a new command.
    /// Returns whether the config space changed (always).
    public mutating func start(epoch: UInt64) -> Bool {
        commandID = commandID < Self.minimumID || commandID == .max ? Self.minimumID : commandID + 1
        self.epoch = epoch
        status = .requested
        return true
    }

    /// A sync is about to happen: hints stop applying.  Returns whether the config space changed.
    public mutating func stop() -> Bool {
        switch status {
        case .requested, .started:
            status = .stopped
            return true
        case .stopped, .done:
            return false
        }
    }

    /// The guest stopped or the migration ended.  Returns whether the config space changed.
    public mutating func finish() -> Bool {
        guard status != .done else { return false }
        status = .done
        return true
    }

    /// The device was reset: STOP, whatever came before (as QEMU's reset does).
    public mutating func reset() { status = .stopped }

    /// The driver sent `id` on the free-page queue: the current command's id
    /// starts hinting; once started, any id (the driver's STOP when it has
    /// reported everything) ends it.  An old command's echo changes nothing.
    public mutating func received(commandID id: UInt32) {
        switch status {
        case .requested where id == commandID: status = .started
        case .started: status = .stopped
        case .requested, .stopped, .done: break
        }
    }

    /// Restores a migrated state; nil if the status byte is invalid.
    public init?(status raw: UInt8, commandID: UInt32, epoch: UInt64) {
        guard let status = Status(rawValue: raw) else { return nil }
        (self.status, self.commandID, self.epoch) = (status, commandID, epoch)
    }
}
