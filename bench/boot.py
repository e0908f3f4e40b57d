#!/usr/bin/env python3
"""Benchmark: time from `ferry run` start to the embedded guest's first heartbeat,
and the memory the VMM itself uses beyond guest RAM.

Usage: bench/boot.py [--ferry PATH] [--runs N]
Prints one row per guest size: median and best start-to-first-heartbeat time,
the VMM's own resident memory (total RSS minus the guest RAM mapping's RSS,
read from /proc/PID/smaps), and the guest RAM actually touched.
"""
import argparse
import os
import statistics
import subprocess
import time

SIZES = [("1G", 1 << 30), ("16G", 16 << 30)]


def smaps_rss(pid, guest_bytes):
    total = guest = 0
    size = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if fields[0] == "Size:":
                size = int(fields[1]) * 1024
            elif fields[0] == "Rss:":
                rss = int(fields[1]) * 1024
                total += rss
                if size == guest_bytes:
                    guest += rss
    return total, guest


def one_run(ferry, size, guest_bytes):
    start = time.monotonic()
    proc = subprocess.Popen([ferry, "run", "--memory", size, "--workload", "dirty-rate=1M,working-set=4K", "--run-for", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    first = None
    for line in proc.stdout:
        if line.startswith(b"HB "):
            first = time.monotonic() - start
            break
    time.sleep(0.5)
    total, guest = smaps_rss(proc.pid, guest_bytes)
    proc.stdout.read()
    proc.wait()
    return first, total - guest, guest


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", default=os.path.join(os.path.dirname(__file__), "..", ".build", "release", "ferry"))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"{'guest':>6} {'median ms':>10} {'best ms':>8} {'VMM RSS MiB':>12} {'guest RSS MiB':>14}")
    for size, guest_bytes in SIZES:
        runs = [one_run(args.ferry, size, guest_bytes) for _ in range(args.runs)]
        times = [r[0] * 1000 for r in runs if r[0] is not None]
        vmm = statistics.median(r[1] for r in runs) / 2**20
        guest = statistics.median(r[2] for r in runs) / 2**20
        print(f"{size:>6} {statistics.median(times):10.1f} {min(times):8.1f} {vmm:12.1f} {guest:14.1f}")


if __name__ == "__main__":
    main()
