#!/usr/bin/env bash
# Runs Ferry's whole test suite on a fresh Debian 12 machine of this kind,
# installing what it needs first: Debian packages for the guest build and
# libzstd-dev (the CZstd target), a Python venv with the qemu.qmp client and
# pytest.  Needs root and /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v ld >/dev/null || need_apt+=(binutils)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -e /usr/include/zstd.h ] || need_apt+=(libzstd-dev)   # CZstd: Debian's system libzstd, for multifd compression
if ((${#need_apt[@]})); then
    echo "== installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

if [ ! -x .venv/bin/pytest ] || ! .venv/bin/python -c 'import qemu.qmp' 2>/dev/null; then
    echo "== creating the Python test venv (.venv)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'qemu.qmp==0.0.6' 'pytest>=8'
fi

echo "== checking that the committed embedded guest matches its source"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
guest/embedded/build.sh "$tmp" >/dev/null
if ! cmp -s "$tmp" Sources/EmbeddedGuest/EmbeddedGuestImage.swift; then
    echo "Sources/EmbeddedGuest/EmbeddedGuestImage.swift is stale: run guest/embedded/build.sh" >&2
    exit 1
fi

echo "== installing QEMU 10 (bookworm-backports) for the side-by-side tests"
scripts/install-qemu.sh

echo "== swift build"
swift build --build-tests

echo "== building the tiny PVH test kernel"
guest/pvhtest/build.sh .build/pvhtest.elf

echo "== swift test"
swift test --skip-build --no-parallel   # KVM suites share two cores: one test at a time

echo "== fuzzing (five targets, 30-60 s each)"
scripts/fuzz.sh 60

echo "== pytest (CLI and qemu.qmp)"
FERRY="$PWD/.build/debug/ferry" FERRY_PVHTEST="$PWD/.build/pvhtest.elf" .venv/bin/pytest -q tests/python
