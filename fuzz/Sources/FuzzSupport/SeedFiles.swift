import Glibc

/// Writes a seed corpus generated with the engine's own encoders (`--make-seeds DIR`).
public enum SeedFiles {
    /// Each seed into `directory` (created if missing) under its name.
    public static func write(_ seeds: [(String, [UInt8])], to directory: String) {
        // SAFETY (here and below): plain libc calls on Swift strings and a buffer that outlives them.
        _ = unsafe mkdir(directory, 0o755)
        for (name, bytes) in seeds {
            let path = directory + "/" + name
            guard let file = unsafe fopen(path, "wb") else { fatalError("cannot create \(path)") }
            _ = unsafe bytes.withUnsafeBytes { unsafe fwrite($0.baseAddress, 1, $0.count, file) }
            _ = unsafe fclose(file)
            print("\(path): \(bytes.count) bytes")
        }
    }
}
