import HostIO
import QMP
import Transport

/// QEMU's descriptor commands (`monitor/fds.c`): descriptors a client passed
/// on the QMP socket, named (`getfd`, `closefd`) or gathered in numbered sets
/// (`add-fd`, `remove-fd`, `query-fdsets`), kept in `descriptors`.
extension Machine {
    /// QMP `getfd`: names the descriptor passed with the client's last message.
    func nameDescriptor(_ name: String, _ received: ReceivedDescriptor?) throws(QMPError) {
        guard let descriptor = received?.take() else { throw .generic(DescriptorError.noneSupplied.description) }
        do { try descriptors.addNamed(name, descriptor: descriptor) } catch { throw .generic(error.description) }
    }

    /// QMP `closefd`.
    func closeNamedDescriptor(_ name: String) throws(QMPError) {
        do { try descriptors.closeNamed(name) } catch { throw .generic(error.description) }
    }

    /// QMP `add-fd`: `{"fdset-id": N, "fd": M}`.
    func addDescriptor(_ received: ReceivedDescriptor?, toFdset fdsetID: Int64?, opaque: String?) throws(QMPError) -> JSONValue {
        guard let descriptor = received?.take() else { throw .generic(DescriptorError.noneSupplied.description) }
        do {
            let id = try descriptors.add(descriptor, toFdset: fdsetID, opaque: opaque)
            return ["fdset-id": .int(id), "fd": .int(Int64(descriptor))]
        } catch { throw .generic(error.description) }
    }

    /// QMP `remove-fd`.
    func removeDescriptor(fdset: Int64, fd: Int64?) throws(QMPError) {
        do { try descriptors.remove(fdset: fdset, descriptor: fd) } catch { throw .generic(error.description) }
    }

    /// QMP `query-fdsets`: each set with its descriptors (`opaque` only where `add-fd` gave one).
    var fdsetsJSON: JSONValue {
        .array(descriptors.fdsets.map { set in
            ["fdset-id": .int(set.id), "fds": .array(set.members.map { member in
                var json: [String: JSONValue] = ["fd": .int(Int64(member.descriptor))]
                if let opaque = member.opaque { json["opaque"] = .string(opaque) }
                return .object(json)
            })]
        })
    }
}
