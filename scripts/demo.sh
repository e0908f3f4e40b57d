#!/usr/bin/env bash
# Builds ferry and runs its demo: the embedded guest on 2 vCPUs, with progress.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product ferry
exec .build/debug/ferry demo "$@"
