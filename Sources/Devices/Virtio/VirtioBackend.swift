import GuestMemory

/// What a virtio device type adds to the transport: its id, features, queues
/// and configuration space, and what it does with a notified queue.  A value
/// type, kept under the transport's lock, so a queue is processed, a config
/// field written and a host request (a balloon target) applied one at a time.
public protocol VirtioBackend: Sendable {
    /// The virtio device id (5: balloon).
    var deviceID: UInt32 { get }
    /// Features offered, `VirtioFeature.version1` included.
    var deviceFeatures: UInt64 { get }
    /// How many virtqueues the device has (with the features it offers).
    var queueCount: Int { get }
    /// The configuration space as the driver reads it now (little-endian).
    func configBytes(negotiated: UInt64) -> [UInt8]
    /// The driver wrote `bytes` at `offset` of the configuration space.
    mutating func writeConfig(offset: Int, bytes: [UInt8], context: inout VirtioContext)
    /// The driver set FEATURES_OK with `features` (a subset of `deviceFeatures`).
    mutating func featuresNegotiated(_ features: UInt64)
    /// The driver notified queue `index`; take its chains with `context`.
    mutating func process(queue index: Int, context: inout VirtioContext) throws(VirtqueueError)
    /// The driver reset the device (status 0).
    mutating func reset()
}

/// What a backend may do while it holds the transport's lock: take chains from
/// and return them to its queues, and raise the config-change interrupt.
public struct VirtioContext: ~Copyable {
    let memory: GuestMemoryMap
    var queues: [SplitVirtqueue]
    var usedReturned = false
    var configChanged = false
    /// The features the driver accepted (0 before FEATURES_OK).
    public let negotiated: UInt64

    public var guestMemory: GuestMemoryMap { memory }

    /// The next chain the driver made available on queue `index`, or nil.
    public mutating func pop(queue index: Int) throws(VirtqueueError) -> DescriptorChain? {
        try queues[index].pop(memory)
    }

    /// Returns `chain` on queue `index`, `written` bytes filled in its writable buffers.
    public mutating func push(queue index: Int, _ chain: DescriptorChain, written: UInt32 = 0) throws(VirtqueueError) {
        try queues[index].push(head: chain.head, written: written, memory)
        usedReturned = true
    }

    /// The device changed its configuration space: the generation moves and the driver is interrupted.
    public mutating func changeConfig() { configChanged = true }
}

/// A backend's part of the migration state.
public protocol VirtioBackendState {
    func encodeState(into encoder: inout DeviceStateEncoder)
    /// Loads what `encodeState` wrote (the transport's part already loaded).
    mutating func decodeState(from decoder: inout DeviceStateDecoder) throws(DeviceStateError)
}
