import Glibc

/// A failed socket call: what was attempted and what the kernel said.
public struct SocketError: Error, Equatable, Sendable, CustomStringConvertible {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        // SAFETY: strerror returns a pointer to a NUL-terminated static or thread-local string.
        "\(operation): \(unsafe String(cString: strerror(errno)))"
    }
}
