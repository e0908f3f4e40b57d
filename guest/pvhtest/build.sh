#!/usr/bin/env bash
# Builds the tiny PVH test kernel (an ELF32 with the PVH note) used by the
# boot tests.  Needs binutils.  Usage: build.sh OUTPUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="${1:?usage: build.sh OUTPUT}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc -m32 -E -P "$here/pvhtest.S" -o "$tmp/pvhtest.s"
as --32 "$tmp/pvhtest.s" -o "$tmp/pvhtest.o"
ld -m elf_i386 -nostdlib -static --build-id=none --no-warn-rwx-segments -T "$here/pvhtest.ld" "$tmp/pvhtest.o" -o "$out"
