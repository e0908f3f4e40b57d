#!/usr/bin/env bash
# Installs QEMU 10 (qemu-system-x86) from bookworm-backports, for the side-by-side
# benchmarks and the QEMU compatibility tests.  Adds the backports suite as an
# apt source modelled on the machine's existing Debian source.  Idempotent.
set -euo pipefail
if command -v qemu-system-x86_64 >/dev/null && qemu-system-x86_64 --version | grep -q 'version 1[0-9]\.'; then
    exit 0
fi
list=/etc/apt/sources.list.d/ferry-backports.sources
if [ ! -f "$list" ]; then
    src=/etc/apt/sources.list.d/debian.sources
    uri=$(awk '/^URIs:/ && /debian$/ {print $2; exit}' "$src" 2>/dev/null || true)
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' "$src" 2>/dev/null || true)
    cat > "$list" <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
SRC
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports qemu-system-x86 >/dev/null
qemu-system-x86_64 --version | head -1
