#!/usr/bin/env python3
"""Side-by-side benchmark harness: the same scenario on Ferry and on QEMU 10
(microvm, the identical exported guest and command line), both driven over QMP
with the qemu.qmp library, in one run.  Prints each figure with the ratio.

Scenarios (more arrive with later capabilities):
  boot   time from process start to the guest's first heartbeat, 1 and 2 vCPUs, 2 GiB

Usage: bench/run.sh [--runs N] [--scenario boot]
"""
import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parents[1]
QBOOT = "/usr/share/qemu/qboot.rom"


class VMM:
    """How to start one VMM on the exported guest with a QMP socket."""

    def __init__(self, name, ferry, image):
        self.name, self.ferry, self.image = name, ferry, image

    def command(self, memory, cpus, cmdline, sock):
        if self.name == "ferry":
            return [self.ferry, "run", "--memory", memory, "--cpus", str(cpus), "--kernel", self.image,
                    "--append", cmdline, "--serial", "stdio", "--qmp", f"unix:{sock}"]
        return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", memory,
                "-smp", str(cpus), "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                "-bios", QBOOT, "-kernel", self.image, "-append", cmdline,
                "-qmp", f"unix:{sock},server=on,wait=off"]


async def qmp_quit(sock):
    """Checks the VM runs (query-status) and quits it, as a QEMU user would."""
    client = QMPClient("bench")
    for _ in range(200):
        try:
            await client.connect(str(sock))
            break
        except (ConnectionError, FileNotFoundError, OSError):
            await asyncio.sleep(0.01)
    status = await client.execute("query-status")
    assert status["status"] == "running", status
    try:
        await client.execute("quit")
        await client.disconnect()
    except EOFError:
        pass    # QEMU may close the socket before its reply to quit; the exit status is checked instead


def boot_once(vmm, memory, cpus, cmdline):
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "qmp.sock"
        start = time.monotonic()
        proc = subprocess.Popen(vmm.command(memory, cpus, cmdline, sock), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        first = None
        for line in proc.stdout:
            if line.lstrip(b"\x1b[?7lc\x1b[2J\x1b[0m").startswith(b"HB ") or b"HB 1 " in line:
                first = time.monotonic() - start
                break
        try:
            asyncio.run(qmp_quit(sock))
        except Exception as error:
            raise RuntimeError(f"{vmm.name}: QMP quit failed: {error!r}") from error
        proc.stdout.read()
        if proc.wait(timeout=10) != 0:
            raise RuntimeError(f"{vmm.name} exited with status {proc.returncode} after quit")
        if first is None:
            raise RuntimeError(f"{vmm.name}: no heartbeat")
        return first * 1000


def ferry_cmdline(ferry, cpus):
    out = subprocess.run([ferry, "guest", "cmdline", "--cpus", str(cpus), "--workload", "dirty-rate=1M,working-set=4K"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def scenario_boot(ferry_vmm, qemu_vmm, runs):
    print("scenario boot: process start -> first heartbeat, 2 GiB, median of", runs, "runs (ms)")
    print(f"{'vCPUs':>6} {'Ferry':>9} {'QEMU 10':>9} {'QEMU/Ferry':>11}")
    for cpus in (1, 2):
        cmdline = ferry_cmdline(ferry_vmm.ferry, cpus)
        figures = {}
        for vmm in (ferry_vmm, qemu_vmm):
            boot_once(vmm, "2G", cpus, cmdline)          # warm the page cache
            figures[vmm.name] = statistics.median(boot_once(vmm, "2G", cpus, cmdline) for _ in range(runs))
        print(f"{cpus:>6} {figures['ferry']:9.1f} {figures['qemu']:9.1f} {figures['qemu'] / figures['ferry']:10.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", default=str(ROOT / ".build" / "release" / "ferry"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", choices=["boot"], default="boot")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "guest.elf")
        subprocess.run([args.ferry, "guest", "export", "--output", image], check=True, capture_output=True)
        ferry_vmm, qemu_vmm = VMM("ferry", args.ferry, image), VMM("qemu", args.ferry, image)
        print(subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0])
        if args.scenario == "boot":
            scenario_boot(ferry_vmm, qemu_vmm, args.runs)


if __name__ == "__main__":
    main()
