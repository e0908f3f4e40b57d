// swift-tools-version:6.2
// Ferry: live migration for KVM virtual machines. See README.md for the layout.
import PackageDescription

let strict: [SwiftSetting] = [.strictMemorySafety()]
/// The page-moving modules are optimized even in debug builds: unoptimized Swift
/// moves pages at a few MB/s, which would make the migration tests test nothing but patience.
let hot: [SwiftSetting] = strict + [.unsafeFlags(["-O"], .when(configuration: .debug))]
let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioPosix = Target.Dependency.product(name: "NIOPosix", package: "swift-nio")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")
let histogram = Target.Dependency.product(name: "Histogram", package: "hdrhistogram-swift")

let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ferry", targets: ["ferry"]),
        // For the fuzz targets in fuzz/ (a separate package, built only by scripts/fuzz.sh).
        .library(name: "FerryFuzzable", targets: ["GuestMemory", "MigrationProtocol", "Compression", "Migration", "Analysis", "QMP", "QMPSocket",
                                                   "Devices"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        // C only: kernel UAPI numbers as constants, fixed-arity ioctl/syscall entry points.
        .target(name: "CLinuxUAPI"),
        // Ferry's threads: started with the names the host's tools show, and their scheduling.
        .target(name: "HostThreads", dependencies: ["CLinuxUAPI"], swiftSettings: strict),
        // Typed units, RAM blocks and their host mappings.
        .target(name: "GuestMemory", dependencies: ["CLinuxUAPI", "HostThreads", system], swiftSettings: hot),
        // /dev/kvm: system, VM, vCPU, irqchip, PIT, register state.
        .target(name: "KVM", dependencies: ["CLinuxUAPI", "GuestMemory", system], swiftSettings: strict),
        // PVH ELF kernels: loader and hvm_start_info.
        .target(name: "PVHBoot", dependencies: ["GuestMemory"], swiftSettings: strict),
        // The built-in test guest: image bytes, its ABI, the host-side page verifier.
        .target(name: "EmbeddedGuest", dependencies: ["GuestMemory"], swiftSettings: hot),
        // C only: the frame checksum's block loop with AVX2, used where the CPU has it (the Swift loop is the reference).
        .target(name: "CFrameChecksum"),
        // Pure: the migration stream format (framing, configuration, page records, sections).
        .target(name: "MigrationProtocol", dependencies: ["CFrameChecksum"], swiftSettings: hot),
        // Debian's system libzstd (libzstd-dev), for multifd's zstd compression.
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        // zstd compression of page batches: reusable per-channel contexts, typed errors, no unsafe API.
        .target(name: "Compression", dependencies: ["CZstd"], swiftSettings: hot),
        // The migration engine: RAM blocks, pages, channels and state. No KVM, no NIO.
        .target(name: "Migration", dependencies: ["GuestMemory", "HostThreads", "MigrationProtocol", "Compression", histogram,
                                                .product(name: "DequeModule", package: "swift-collections")], swiftSettings: hot),
        // `ferry analyze`'s logic: stream and mapped-ram files checked with the production decoders. No CLI, no I/O of its own.
        // Optimized in debug builds too: it reads and checksums every page of a file.
        .target(name: "Analysis", dependencies: ["MigrationProtocol", "Migration", "Compression"], swiftSettings: hot),
        // Migration channels: sockets, files and descriptors behind `ByteChannel`; the descriptors QMP clients passed.
        .target(name: "Transport", dependencies: ["CLinuxUAPI", "GuestMemory", "Migration", "MigrationProtocol"], swiftSettings: hot),
        // userfaultfd: the handshake, registration, write-protect, copy, zero page, continue, events. The only caller of its ioctls.
        .target(name: "Userfaultfd", dependencies: ["CLinuxUAPI", system], swiftSettings: strict),
        // Unix stream sockets that carry descriptors (SCM_RIGHTS): the QMP socket's listener and connections.
        .target(name: "HostIO", dependencies: ["CLinuxUAPI"], swiftSettings: strict),
        // Emulated devices: 16550 UART, the guest service port.
        .target(name: "Devices", dependencies: ["GuestMemory"], swiftSettings: strict),
        // Pure QMP: commands, replies, events, negotiation. No I/O.
        .target(name: "QMP", swiftSettings: strict),
        // QMP over a Unix socket: read (with passed descriptors) by HostIO, framed and answered on SwiftNIO.
        .target(name: "QMPSocket", dependencies: ["QMP", "HostIO", "HostThreads", nioCore, nioPosix], swiftSettings: strict),
        // Composition root: the machine, vCPU threads, run state.
        .target(name: "VMM", dependencies: ["KVM", "GuestMemory", "PVHBoot", "EmbeddedGuest", "Devices", "QMP", "Migration",
                                           "MigrationProtocol", "Transport", "HostIO", "HostThreads", "Userfaultfd"],
                swiftSettings: strict),
        .executableTarget(name: "ferry", dependencies: ["VMM", "QMPSocket", "QMP", "EmbeddedGuest", "GuestMemory", "Migration", "Transport",
                                                        "Analysis", "Devices", "HostThreads", argumentParser], swiftSettings: strict),
        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory", "HostThreads"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM"]),
        .testTarget(name: "EmbeddedGuestTests", dependencies: ["EmbeddedGuest", "GuestMemory", "PVHBoot"]),
        .testTarget(name: "QMPTests", dependencies: ["QMP"]),
        .testTarget(name: "MigrationProtocolTests", dependencies: ["MigrationProtocol"]),
        .testTarget(name: "CompressionTests", dependencies: ["Compression"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "Migration", "GuestMemory"]),
        .testTarget(name: "AnalysisTests", dependencies: ["Analysis", "Migration", "MigrationProtocol"]),
        .testTarget(name: "QMPSocketTests", dependencies: ["QMPSocket", "QMP", "HostIO"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "GuestMemory"]),
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "KVM", "GuestMemory", "EmbeddedGuest", "QMP", "Migration",
                                                           "MigrationProtocol", "Transport", "Analysis", "Devices"]),
    ]
)
