// swift-tools-version:6.2
// Ferry's libFuzzer targets, kept out of the main package so `swift build` and
// `swift test` never see them.  Built and run by scripts/fuzz.sh:
//     swift build -c release --sanitize=fuzzer --package-path fuzz --scratch-path .build-fuzz
// The library targets keep their own settings (strict memory safety) from ../Package.swift.
import PackageDescription

let strict: [SwiftSetting] = [.strictMemorySafety()]
let ferry = "Ferry"

let package = Package(
    name: "FerryFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: ferry, path: ".."),
    ],
    targets: [
        // What the stream-shaped targets share: the input as a channel, the frame fixer.
        .target(name: "FuzzSupport", dependencies: [.product(name: "FerryFuzzable", package: ferry)], swiftSettings: strict),
        // The migration stream into a real RAM mapping; `--make-seeds DIR` writes its seed corpus.
        .executableTarget(name: "FuzzStream", dependencies: ["FuzzSupport", .product(name: "FerryFuzzable", package: ferry)],
                          swiftSettings: strict),
        // The return path: the pure decoder against the engine's reader thread; `--make-seeds DIR` as above.
        .executableTarget(name: "FuzzReturnPath", dependencies: ["FuzzSupport", .product(name: "FerryFuzzable", package: ferry)],
                          swiftSettings: strict),
        // A mapped-ram file: header and block metadata decoders, then `ferry analyze`'s analyzer; `--make-seeds DIR` as above.
        .executableTarget(name: "FuzzMappedRAM", dependencies: ["FuzzSupport", .product(name: "FerryFuzzable", package: ferry)],
                          swiftSettings: strict),
        // A hostile virtio driver against the virtio-balloon and its transport; hostile device state.
        .executableTarget(name: "FuzzVirtio", dependencies: [.product(name: "FerryFuzzable", package: ferry)],
                          swiftSettings: strict),
        // QMP text: JSON splitting, session, command decoding, URIs and parameters.
        .executableTarget(name: "FuzzQMP", dependencies: [.product(name: "FerryFuzzable", package: ferry)],
                          swiftSettings: strict),
    ]
)
