"""Background snapshots side by side (scenario background-snapshot of side_by_side.py).

Ferry and QEMU 10 snapshot the identical exported guest with capability
`background-snapshot` into a stream `file:` (QEMU's only target for it), the
guest writing its working set once and then dirtying it at an offered rate or
at full speed, `max-bandwidth` lifted on both.  Ferry runs with each scan
limiter (`x-ferry-snapshot-limiter` off, seed, latency), and (`seed/mapped-ram`)
into a mapped-ram file with 2 multifd writers and direct-io, Ferry's own.  Per run: the save
rate (file bytes per second of `total-time`), total time, downtime, the
guest's largest heartbeat gap during the snapshot, the guest's slow page writes
during it (its SA histogram: p50/p99 of the page writes that took 16 us or
more), the rate the guest achieved, Ferry's write-fault latency (query-migrate),
the VMM's CPU-seconds, and the restore time (`-incoming defer`, then
`migrate-incoming file:`, to running).  In the same run: the disk's O_DIRECT
sequential write bandwidth (fio) and the host's first-touch floor.
"""
import asyncio
import json
import subprocess
import re
import statistics
import time
from pathlib import Path

from side_by_side import SETTLE_SECONDS, Console, check_restored_guest, cpu_seconds, first_touch_ms, quit_all
from mapped_ram import drop_caches, fio_mbps, guarded, parse_size, print_table, vmm_process

SLOW_FLOOR_US = 16


class SlowAccesses(Console):
    """A console that also keeps the guest's cumulative slow-access lines (SA seq n= of= b=...)."""

    def __init__(self, proc):
        self.slow = []      # (host monotonic seconds, [bucket counts])
        super().__init__(proc)

    def _read(self, stream):
        beat = re.compile(rb"HB (\d+) t=(\d+) pages=(\d+)(?: err=(\d+))?")
        slow = re.compile(rb"SA (\d+) n=(\d+) of=(\d+) b=([\d,]*)")
        for line in stream:
            match = beat.search(line)
            if match:
                self.beats.append((time.monotonic(), int(match[1]), int(match[2]), int(match[3])))
                self.errors = int(match[4] or 0)
                continue
            match = slow.search(line)
            if match:
                counts = [int(c) for c in match[4].split(b",") if c]
                self.slow.append((time.monotonic(), counts))


def bucket_floor_us(bucket):
    octave, quarter = divmod(bucket, 4)
    return SLOW_FLOOR_US * (1 << octave) * (1 + quarter / 4)


def histogram_delta(before, after):
    """Per bucket, the slow page writes between two cumulative histograms."""
    size = max(len(before), len(after))
    return [(after[i] if i < len(after) else 0) - (before[i] if i < len(before) else 0) for i in range(size)]


def slow_percentiles(before, after):
    """p50, p99 (us, bucket lower bounds) and count of the slow page writes between two cumulative histograms."""
    delta = histogram_delta(before, after)
    total = sum(delta)
    if total <= 0:
        return None, None, 0
    def at(fraction):
        rank, seen = fraction * total, 0
        for bucket, count in enumerate(delta):
            seen += count
            if seen >= rank:
                return bucket_floor_us(bucket)
        return bucket_floor_us(len(delta) - 1)
    return at(0.50), at(0.99), total


def slow_max(before, after):
    """The slowest page access (us, its bucket's lower bound) between two cumulative histograms."""
    delta = histogram_delta(before, after)
    top = max((bucket for bucket, count in enumerate(delta) if count > 0), default=None)
    return None if top is None else bucket_floor_us(top)


async def snapshot_once(vmm, cmdline, memory, ready_pages, limiter, path):
    async with vmm_process(vmm, memory, cmdline, None, [], SlowAccesses) as (proc, console, client):
        mode, _, target = limiter.partition("/")
        capabilities = [{"capability": "background-snapshot", "state": True}]
        parameters = {"max-bandwidth": 100 << 30}
        if target == "mapped-ram":      # Ferry's own: a mapped-ram file, 2 multifd writers, direct-io
            capabilities += [{"capability": "mapped-ram", "state": True}, {"capability": "multifd", "state": True}]
            parameters.update({"multifd-channels": 2, "direct-io": True})
        await client.execute("migrate-set-capabilities", {"capabilities": capabilities})
        if vmm.name == "ferry":
            parameters["x-ferry-snapshot-limiter"] = mode
        await client.execute("migrate-set-parameters", parameters)
        deadline = time.monotonic() + 240
        while console.pages() < ready_pages or len(console.slow) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{vmm.name}: guest never got ready ({console.pages()} pages)")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)        # a fresh SA line, from warm dirtying
        if path.exists():
            path.unlink()
        slow_before = console.slow[-1][1]
        pages_before, beats_before = console.pages(), len(console.beats)
        cpu_start, start = cpu_seconds(proc.pid), time.monotonic()
        await client.execute("migrate", {"uri": f"file:{path}"})
        while True:
            info = await client.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"{vmm.name}: snapshot {status}: {info.get('error-desc', info)}")
            if time.monotonic() > start + 300:
                raise RuntimeError(f"{vmm.name}: no completion: {info}")
            await asyncio.sleep(0.01)
        end, cpu_end = time.monotonic(), cpu_seconds(proc.pid)
        pages_after = console.pages()
        # The next SA line closes the window (at most ~1 s of warm dirtying after the end).
        count = len(console.slow)
        while len(console.slow) == count and time.monotonic() < end + 3:
            await asyncio.sleep(0.02)
        slow_after = console.slow[-1][1]
        beats = [b for b in console.beats[beats_before - 1:] if b[0] <= end + 0.2]
        gap = max((b[0] - a[0] for a, b in zip(beats, beats[1:])), default=0) * 1000
        state = (await client.execute("query-status"))["status"]
        if state != "running":
            raise RuntimeError(f"{vmm.name}: the guest is {state} after its snapshot")
        await quit_all([client], [proc])
    p50, p99, slow = slow_percentiles(slow_before, slow_after)
    fault = info.get("x-ferry-background-snapshot", {}).get("fault-latency-us", {})
    size = path.stat().st_blocks * 512      # bytes in the file (a mapped-ram file's zero pages are holes)
    total = info["total-time"]
    return {"total": total, "downtime": info.get("downtime"), "mbps": size / total / 1000, "bytes": size,
            "gap": gap, "slow_p50": p50, "slow_p99": p99, "slow": slow,
            "guest_mbps": (pages_after - pages_before) * 4096 / (end - start) / 1e6, "cpu": cpu_end - cpu_start,
            "fault_p50": fault.get("p50"), "fault_p99": fault.get("p99"), "fault_max": fault.get("max"),
            "faults": info.get("x-ferry-background-snapshot", {}).get("write-faults")}


async def restore_once(vmm, cmdline, memory, path):
    drop_caches()
    async with vmm_process(vmm, memory, cmdline, "defer", []) as (proc, console, client):
        start = time.monotonic()
        await client.execute("migrate-incoming", {"uri": f"file:{path}"})
        while (await client.execute("query-status"))["status"] != "running":
            if proc.poll() is not None or time.monotonic() > start + 120:
                raise RuntimeError(f"{vmm.name}: restore never ran")
            await asyncio.sleep(0.005)
        took = (time.monotonic() - start) * 1000
        await check_restored_guest(vmm.name, console, start + 120)
        await quit_all([client], [proc])
    return took


def scenario_snapshot(ferry_vmm, qemu_vmm, vmms, runs, memory, working_set, dirty_rates, limiters, directory, raw_path):
    ferry = ferry_vmm.ferry
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    disk = fio_mbps(directory, parse_size(working_set), 1, 1, 1 << 20)
    touch = parse_size(working_set) / first_touch_ms(parse_size(working_set)) / 1000
    print(f"scenario background-snapshot: {memory} guest, working set {working_set}, median of {runs} runs, "
          f"file in {directory}")
    print(f"  host: O_DIRECT sequential write {disk['write']:.0f} MB/s (fio, 1 MiB blocks), first touch {touch:.0f} MB/s")
    configs = [(v, limiter) for v in vmms for limiter in (limiters if v.name == "ferry" else ["-"])]
    subprocess.run(["sync"], check=True)
    raw = {"disk": disk, "first_touch_mbps": touch, "samples": {}}
    errors = {}
    for rate in dirty_rates:
        workload = f"dirty-rate={rate},working-set={working_set}"
        cmdline = subprocess.run([ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                                 check=True, capture_output=True, text=True).stdout.strip()
        ready = parse_size(working_set) // 4096
        samples = {f"{v.name} {limiter}": [] for v, limiter in configs}
        restores = {key: [] for key in samples}
        for run in range(runs):
            for vmm, limiter in configs:       # alternating: every configuration once per round
                path = directory / f"{vmm.name}.snapshot"
                key = f"{vmm.name} {limiter}"
                time.sleep(SETTLE_SECONDS)      # freed memory goes back to the host's host first (see bench/README.md)
                sample = asyncio.run(guarded(vmm, snapshot_once(vmm, cmdline, memory, ready, limiter, path), errors, key))
                samples[key].append(sample)
                if sample and limiter in ("-", "seed", "seed/mapped-ram"):
                    time.sleep(SETTLE_SECONDS)
                    took = asyncio.run(guarded(vmm, restore_once(vmm, cmdline, memory, path), errors, f"{vmm.name} restore"))
                    if took is not None:
                        restores[key].append(took)
                if path.exists():
                    path.unlink()
        raw["samples"][rate] = {"snapshots": samples, "restores": restores}
        print(f"\n  dirty-rate={rate}:")
        print("| config | save MB/s | total ms | downtime ms | guest gap ms | slow p50/p99 us (count) | guest MB/s "
              "| fault p50/p99/max us | CPU-s |")
        print("| --- " * 9 + "|")
        def med(values):
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None
        for key, runs_ in samples.items():
            got = [s for s in runs_ if s]
            if not got:
                print(f"| {key} | failed: {errors.get(key, '?')} |")
                continue
            m = {k: med([s[k] for s in got]) for k in got[0]}
            fault = "-" if m["fault_p50"] is None else f"{m['fault_p50']:.0f}/{m['fault_p99']:.0f}/{m['fault_max']:.0f}"
            slow = "-" if m["slow_p50"] is None else f"{m['slow_p50']:.0f}/{m['slow_p99']:.0f} ({m['slow']:.0f})"
            print(f"| {key} | {m['mbps']:.0f} | {m['total']:.0f} | {m['downtime'] or 0:.0f} | {m['gap']:.0f} | {slow} "
                  f"| {m['guest_mbps']:.0f} | {fault} | {m['cpu']:.2f} |")
        for name, values in restores.items():
            if values:
                print(f"  restore {name}: {statistics.median(values):.0f} ms to running (median of {len(values)})")
    raw["errors"] = errors
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1, default=str))
    print(f"  raw samples: {raw_path}")
