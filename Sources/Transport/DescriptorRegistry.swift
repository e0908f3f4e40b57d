import CLinuxUAPI
import Glibc
import Migration
import Synchronization

/// The descriptors management tools handed this process over QMP, as QEMU
/// keeps them (`monitor/fds.c`): named descriptors (`getfd`, used by
/// `fd:NAME` migration URIs) and numbered descriptor sets (`add-fd`, used by
/// paths `/dev/fdset/N`).  Owns every descriptor it holds and closes it when it
/// is removed, replaced, or the registry goes away.
///
/// One registry per machine; QEMU keeps named descriptors per monitor, Ferry
/// has one namespace for its QMP connections and its human monitor.  Unlike
/// QEMU, a set does not track the duplicates it handed out (`duplicate`): they
/// belong to the caller, and a set lives exactly as long as it holds descriptors.
public final class DescriptorRegistry: Sendable {
    /// One descriptor of a set, with the text `add-fd` gave it (`opaque`).
    public struct Member: Equatable, Sendable {
        public let descriptor: Int32
        public let opaque: String?

        public init(descriptor: Int32, opaque: String?) {
            (self.descriptor, self.opaque) = (descriptor, opaque)
        }
    }

    /// One descriptor set, its members in the order they were added (`query-fdsets`).
    public struct Fdset: Equatable, Sendable {
        public let id: Int64
        public let members: [Member]

        public init(id: Int64, members: [Member]) {
            (self.id, self.members) = (id, members)
        }
    }

    struct State {
        var named: [String: Int32] = [:]
        /// By id; each set's members in the order added.  A set is never empty.
        var sets: [Int64: [Member]] = [:]
    }
    let state = Mutex(State())

    public init() {}

    deinit { closeAll() }

    // MARK: named descriptors (getfd, closefd, fd:NAME)

    /// Names `descriptor` (QMP `getfd`), which the registry now owns.  A
    /// descriptor of the same name is closed and replaced.
    ///
    /// - Throws: ``DescriptorError/nameStartsWithDigit`` (the descriptor is
    ///   closed, as QEMU closes it).
    public func addNamed(_ name: String, descriptor: Int32) throws(DescriptorError) {
        if let first = name.unicodeScalars.first, ("0"..."9").contains(first) {
            _ = Glibc.close(descriptor)
            throw .nameStartsWithDigit
        }
        let replaced = state.withLock { $0.named.updateValue(descriptor, forKey: name) }
        if let replaced, replaced != descriptor { _ = Glibc.close(replaced) }
    }

    /// Closes the descriptor named `name` (QMP `closefd`).
    ///
    /// - Throws: ``DescriptorError/notFound(_:)`` for an unknown name.
    public func closeNamed(_ name: String) throws(DescriptorError) {
        guard let descriptor = takeNamed(name) else { throw .notFound(name) }
        _ = Glibc.close(descriptor)
    }

    /// Removes the descriptor named `name` and returns it: the caller owns it
    /// now (QEMU's `monitor_get_fd`, which `fd:NAME` migration URIs use).
    public func takeNamed(_ name: String) -> Int32? {
        state.withLock { $0.named.removeValue(forKey: name) }
    }

    /// Whether a descriptor is named `name`.
    public func hasNamed(_ name: String) -> Bool {
        state.withLock { $0.named[name] != nil }
    }

    /// The names given, sorted.
    public var names: [String] { state.withLock { $0.named.keys.sorted() } }

    // MARK: descriptor sets (add-fd, remove-fd, query-fdsets, /dev/fdset/N)

    /// Adds `descriptor`, which the registry now owns, to set `fdset` (QMP
    /// `add-fd`), creating the set if need be.  Without an id, the set is the
    /// lowest id no set has, as in QEMU.  Returns the set's id.
    ///
    /// - Throws: ``DescriptorError/negativeFdsetID`` (the descriptor is closed, as QEMU closes it).
    public func add(_ descriptor: Int32, toFdset fdset: Int64?, opaque: String?) throws(DescriptorError) -> Int64 {
        if let fdset, fdset < 0 {
            _ = Glibc.close(descriptor)
            throw .negativeFdsetID
        }
        return state.withLock { state in
            var id = fdset ?? 0
            if fdset == nil { while state.sets[id] != nil { id += 1 } }
            state.sets[id, default: []].append(Member(descriptor: descriptor, opaque: opaque))
            return id
        }
    }

    /// Closes descriptor `descriptor` of set `fdset`, or the whole set without
    /// one (QMP `remove-fd`).  A set left empty is gone.
    ///
    /// - Throws: ``DescriptorError/notFound(_:)`` naming `fdset-id:N` or
    ///   `fdset-id:N, fd:M`, as QEMU does, for an unknown set or a descriptor not in it.
    public func remove(fdset: Int64, descriptor: Int64?) throws(DescriptorError) {
        let removed = state.withLock { state -> [Member]? in
            guard let members = state.sets[fdset] else { return nil }
            guard let descriptor else {
                state.sets[fdset] = nil
                return members
            }
            guard let index = members.firstIndex(where: { Int64($0.descriptor) == descriptor }) else { return nil }
            state.sets[fdset]!.remove(at: index)
            if state.sets[fdset]!.isEmpty { state.sets[fdset] = nil }
            return [members[index]]
        }
        guard let removed else {
            throw .notFound(descriptor.map { "fdset-id:\(fdset), fd:\($0)" } ?? "fdset-id:\(fdset)")
        }
        for member in removed { _ = Glibc.close(member.descriptor) }
    }

    /// Every set by id, each with its members in the order added (QMP `query-fdsets`).
    public var fdsets: [Fdset] {
        state.withLock { state in state.sets.keys.sorted().map { Fdset(id: $0, members: state.sets[$0]!) } }
    }

    /// A duplicate (close-on-exec) of a descriptor of set `fdset` that fits the
    /// access asked for: writable, an `O_WRONLY` or `O_RDWR` one; otherwise an
    /// `O_RDONLY` or `O_RDWR` one; and whose `O_DIRECT` flag equals `direct`
    /// (the flags as `fcntl(F_GETFL)` reports them).  The first that fits, in
    /// the order added.  The caller owns the duplicate; the set keeps its own.
    /// This is how a path `/dev/fdset/N` is opened (QEMU's `monitor_fdset_dup_fd_add`;
    /// a set may hold a buffered and an `O_DIRECT` descriptor of one file).
    ///
    /// - Throws: ``ChannelError/system(_:errno:)``: `ENOENT` for a set that does
    ///   not exist, `EACCES` for one with no fitting descriptor, or what
    ///   `fcntl` said.
    public func duplicate(fdset: Int64, writable: Bool, direct: Bool) throws(ChannelError) -> Int32 {
        // Under the lock: a concurrent remove-fd cannot close a descriptor between the check and the dup.
        let result = state.withLock { state -> Result<Int32, ChannelError> in
            guard let members = state.sets[fdset] else {
                return .failure(.system("Failed to find fdset /dev/fdset/\(fdset)", errno: ENOENT))
            }
            for member in members {
                var isDirect: Int32 = 0, access: Int32 = 0
                // SAFETY: both pointers are to locals that outlive the call.
                let flags = unsafe CLinuxUAPI_file_flags(member.descriptor, &isDirect, &access)
                guard flags == 0 else {
                    return .failure(.system("Failed to read file status flags for fd=\(member.descriptor)", errno: -flags))
                }
                // access: bit 0 readable, bit 1 writable.
                guard access & (writable ? 2 : 1) != 0, (isDirect != 0) == direct else { continue }
                let copy = CLinuxUAPI_dup_cloexec(member.descriptor)
                guard copy >= 0 else { return .failure(.system("Failed to dup() fd=\(member.descriptor) of /dev/fdset/\(fdset)", errno: -copy)) }
                return .success(copy)
            }
            let mode = (writable ? "writing (O_WRONLY or O_RDWR)" : "reading (O_RDONLY or O_RDWR)") + (direct ? " with O_DIRECT" : " without O_DIRECT")
            return .failure(.system("No descriptor in /dev/fdset/\(fdset) is open for \(mode)", errno: EACCES))
        }
        return try result.get()
    }

    /// The set a path `/dev/fdset/N` names: N in decimal digits only, or nil
    /// for any other path.
    public static func fdsetID(path: String) -> Int64? {
        let prefix = "/dev/fdset/"
        guard path.hasPrefix(prefix) else { return nil }
        let digits = path.dropFirst(prefix.count)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return Int64(digits)
    }

    /// Closes every descriptor held, named or in a set, and forgets them.
    public func closeAll() {
        let held = state.withLock { state -> [Int32] in
            defer { state = State() }
            return Array(state.named.values) + state.sets.values.flatMap { $0.map(\.descriptor) }
        }
        for descriptor in held { _ = Glibc.close(descriptor) }
    }
}
