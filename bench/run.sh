#!/usr/bin/env bash
# Runs the side-by-side benchmarks (Ferry vs QEMU 10 on the identical guest).
# Installs QEMU 10, fio (the mapped-ram scenarios' disk figures) and the Python venv when missing,
# builds ferry in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-qemu.sh >/dev/null
if ! command -v fio >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import qemu.qmp' 2>/dev/null; then
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check 'qemu.qmp==0.0.6' 'pytest>=8'
fi
swift build -c release --product ferry >/dev/null
exec .venv/bin/python bench/side_by_side.py "$@"
