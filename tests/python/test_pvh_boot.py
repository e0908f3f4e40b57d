"""Outside PVH kernels: the project's tiny test kernel, hostile ELFs, and the
exported embedded guest under both Ferry and QEMU 10 microvm."""
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import assert_verified_clean
from qemu_microvm import microvm_command

ROOT = Path(__file__).resolve().parents[2]
PVHTEST = Path(os.environ.get("FERRY_PVHTEST", ROOT / ".build" / "pvhtest.elf"))


def run(*args, timeout=30):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pvhtest(tmp_path_factory):
    if not PVHTEST.exists():
        subprocess.run([str(ROOT / "guest" / "pvhtest" / "build.sh"), str(PVHTEST)], check=True)
    return str(PVHTEST)


def make_elf64(segments, entry=0x200000, note=True):
    """A minimal ELF64 x86-64 file: `segments` is [(paddr, data, memsz)], plus a PVH note."""
    phnum = len(segments) + (1 if note else 0)
    header_size = 64 + 56 * phnum
    note_bytes = struct.pack("<III4sI", 4, 4, 18, b"Xen\0", entry)
    offset = header_size + len(note_bytes)
    phdrs, blobs = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset + len(blobs), paddr, paddr, len(data), memsz, 0x1000)
        blobs += data
    if note:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, header_size, 0, 0, len(note_bytes), len(note_bytes), 4)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, entry, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    return ehdr + phdrs + note_bytes + blobs


def test_test_kernel_sees_cmdline_memmap_and_module(ferry, pvhtest, tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"RAMDISK!" + bytes(5000))
    result = run(ferry, "run", "--kernel", pvhtest, "--append", "root=/dev/ram0 hello=world",
                 "--initrd", str(initrd), "--memory", "64M", "--run-for", "0.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "PVH magic=336ec578 version=00000001" in out
    assert "cmdline=root=/dev/ram0 hello=world\n" in out
    assert "memmap entries=1\nmemmap 0000000000000000 0000000004000000 1\n" in out
    module = re.search(r"module0 ([0-9a-f]{16}) ([0-9a-f]{16}) head=(.{8})", out)
    assert module, out
    address, size = int(module[1], 16), int(module[2], 16)
    assert size == 5008 and address % 4096 == 0 and address + size <= 64 << 20
    assert module[3] == "RAMDISK!"
    assert out.rstrip().endswith("done")


def test_test_kernel_sees_ram_above_4g(ferry, pvhtest):
    result = run(ferry, "run", "--kernel", pvhtest, "--memory", "5G", "--run-for", "0.5")
    assert result.returncode == 0, result.stderr
    assert ("memmap entries=2\nmemmap 0000000000000000 00000000c0000000 1\n"
            "memmap 0000000100000000 0000000080000000 1\n") in result.stdout
    assert "modules=0" in result.stdout


@pytest.mark.parametrize("name, elf, message", [
    ("no-note", make_elf64([(0x200000, b"\xf4" * 16, 16)], note=False), "no PVH entry note"),
    ("overlap", make_elf64([(0x200000, b"\xf4" * 16, 0x2000), (0x201000, b"\xf4" * 16, 16)]), "segments 0 and 1 overlap"),
    ("outside", make_elf64([(0x7ff0000, b"\xf4" * 16, 0x20000)], entry=0x7ff0000), "lies outside guest RAM"),
    ("in-hole", make_elf64([(0xfee00000, b"\xf4" * 16, 16)], entry=0xfee00000), "lies outside guest RAM"),
    ("boot-data", make_elf64([(0x6000, b"\xf4" * 16, 16)], entry=0x6000), "overlaps the boot data"),
    ("wrapping", make_elf64([(0xffff_ffff_ffff_f000, b"\xf4" * 16, 0x2000)]), "lies outside guest RAM"),
    ("entry-outside", make_elf64([(0x200000, b"\xf4" * 16, 16)], entry=0x300000), "is not inside a loaded segment"),
    ("truncated", make_elf64([(0x200000, b"\xf4" * 16, 16)])[:100], "truncated"),
])
def test_bad_kernels_are_refused(ferry, tmp_path, name, elf, message):
    kernel = tmp_path / f"{name}.elf"
    kernel.write_bytes(elf)
    result = run(ferry, "run", "--kernel", str(kernel), "--memory", "128M", "--serial", "none", "--run-for", "0.2")
    assert result.returncode == 2, result
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_command_line_and_initrd_too_large(ferry, pvhtest, tmp_path):
    result = run(ferry, "run", "--kernel", pvhtest, "--append", "x" * 5000, "--memory", "64M", "--run-for", "0.2")
    assert result.returncode == 2 and "command line is 5000 bytes; the limit is 4095" in result.stderr
    big = tmp_path / "big.img"
    big.write_bytes(bytes(70 << 20))
    result = run(ferry, "run", "--kernel", pvhtest, "--initrd", str(big), "--memory", "64M", "--run-for", "0.2")
    assert result.returncode == 2 and "does not fit" in result.stderr


@pytest.mark.parametrize("cpus", [1, 2])
def test_exported_guest_under_ferry(ferry, tmp_path, cpus):
    image = tmp_path / "guest.elf"
    assert run(ferry, "guest", "export", "--output", str(image)).returncode == 0
    # No tsc-khz: the guest calibrates its TSC against the LAPIC timer, as under QEMU.
    result = run(ferry, "run", "--kernel", str(image), "--cpus", str(cpus), "--memory", "256M",
                 "--append", f"cpus={cpus} dirty-rate=16M working-set=32M", "--run-for", "1.5", "--verify-on-exit")
    assert result.returncode == 0, result.stderr
    beats = re.findall(r"^HB (\d+) t=(\d+) pages=(\d+) err=(\d+)$", result.stdout, re.M)
    assert len(beats) >= 10
    assert all(err == "0" for *_, err in beats)
    # Calibrated time tracks host time: 10 beats a second, t in ms.
    seq, t = int(beats[-1][0]), int(beats[-1][1])
    assert abs(t - (seq - 1) * 100) <= 20
    assert_verified_clean(result.stderr)


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="QEMU 10 not installed (scripts/install-qemu.sh)")
@pytest.mark.parametrize("cpus", [1, 2])
def test_exported_guest_under_qemu_microvm(ferry, tmp_path, cpus):
    image = tmp_path / "guest.elf"
    assert run(ferry, "guest", "export", "--output", str(image)).returncode == 0
    cmd = microvm_command(QEMU, image, "256M", cpus, f"cpus={cpus} dirty-rate=16M working-set=32M")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lines = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            if re.match(r"HB 12 ", line):
                break
    finally:
        proc.kill()
        proc.wait()
    text = "\n".join(lines)
    assert f"ferry-guest: cpus={cpus}" in text
    beats = re.findall(r"HB (\d+) t=(\d+) pages=(\d+) err=(\d+)", text)
    assert len(beats) >= 12, text
    assert all(err == "0" for *_, err in beats)
    assert int(beats[-1][2]) > 0, "the workload wrote pages"
