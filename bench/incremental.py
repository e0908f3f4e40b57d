"""Incremental saves (scenario mapped-ram-incremental of side_by_side.py): Ferry's x-ferry-incremental.

QEMU has no incremental save, so the references come from the same run: Ferry's own full save of the
same guest into the same file, and the disk's O_DIRECT sequential write bandwidth (fio, 1 job, libaio,
iodepth 32, 4 MiB blocks) into a fresh sparse file, as the full save writes, and over that file again, as
an incremental save rewrites blocks already allocated.

One Ferry process per run, its guest (`--memory`, 1 vCPU) writing its working set (`--working-set`) once
and then sweeping it at `--dirty-rate`; capabilities `mapped-ram`, `multifd` (`--channels`, default 4) and
`x-ferry-incremental`, parameter `direct-io` (`--direct-io`, default on), `max-bandwidth` 100 GiB/s.
Once the working set is written: `stop`, a full save into the file, `cont`.  Then for each of
`--incremental-seconds` (default 0.25, 1, 4: at 256 MiB/s about 64, 256 and 1024 MiB changed) the guest
runs that long, then `stop`, an incremental save into the same file, `cont`.  Last, a live incremental
save, whose file is restored into a fresh `-incoming defer` destination from a dropped page cache: the
restored guest must beat with no verify error.  Reported per save, medians over the runs: the MiB the
guest wrote since the previous save (its heartbeat's page count), the MiB the save wrote (`normal-bytes`),
`total-time`, the save's write rate against the disk's (fresh-file write for the full save, overwrite for
the others), and its milliseconds per 100 MiB written; and a least-squares line through the stopped
incremental saves (total-time = fixed + per-MiB x MiB).
"""
import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path

from mapped_ram import fio_mbps, parse_size, restore_once, set_mapped_ram, vmm_process, wait_migration, wait_ready
from side_by_side import SETTLE_SECONDS, ThreadSampler, quit_all

MIB = 1 << 20


async def save(vmm, client, proc, console, path, stopped):
    """One save into `path` (`stop` first when `stopped`, `cont` after); returns its figures, with the
    guest's page count at its last beat before the save (`pages`)."""
    if stopped:
        await client.execute("stop")
    pages = console.pages()
    start = time.monotonic()
    await client.execute("migrate", {"uri": f"file:{path}"})
    info, _, _ = await wait_migration(vmm, client, proc, ThreadSampler(proc.pid), start + 120)
    await client.execute("cont")
    ram, mapped = info.get("ram", {}), info.get("x-ferry-mapped-ram", {})
    return {"pages": pages, "total": info["total-time"], "written": ram.get("normal-bytes", 0), "passes": ram.get("dirty-sync-count", 0),
            "downtime": info.get("downtime", 0), "incremental": mapped.get("incremental"),
            "generation": mapped.get("generation")}


async def run_once(vmm, cmdline, memory, ready_pages, channels, direct_io, seconds, path):
    """Full save, then incremental ones after each of `seconds` of dirtying, then a live one; returns
    [(label, figures)] in that order."""
    results = []
    async with vmm_process(vmm, memory, cmdline, None, []) as (proc, console, client):
        await set_mapped_ram(client, channels, direct_io)
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ferry-incremental", "state": True}]})
        await client.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30, "downtime-limit": 300})
        await wait_ready(vmm, console, ready_pages)
        if path.exists():
            path.unlink()
        full = await save(vmm, client, proc, console, path, True)
        full["guest"] = full["pages"] * 4096
        results.append(("full", full))
        for interval in seconds + [None]:
            pages = console.pages()
            await asyncio.sleep(interval if interval is not None else 1.0)
            figures = await save(vmm, client, proc, console, path, interval is not None)
            # The guest's page count at its last beat before this save, against the one before it ran.
            figures["guest"] = (figures["pages"] - pages) * 4096
            if not figures["incremental"]:
                raise RuntimeError(f"the save after {interval:g} s was not incremental: {figures}")
            results.append((f"after {interval:g} s" if interval is not None else "live, after 1 s", figures))
        await quit_all([client], [proc])
    return results


def fit(points):
    """Least squares through (x, y): (intercept, slope)."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def scenario_incremental(ferry_vmm, runs, memory, working_set, dirty_rate, channels, direct_io, seconds, directory, raw_path):
    workload = f"dirty-rate={dirty_rate},working-set={working_set}"
    cmdline = subprocess.run([ferry_vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                             check=True, capture_output=True, text=True).stdout.strip()
    ws_bytes = parse_size(working_set)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ferry-incremental.mr"
    print(f"scenario mapped-ram-incremental (Ferry only: QEMU has no incremental save): {memory} guest, 1 vCPU, "
          f"workload {workload}; mapped-ram, multifd {channels}, direct-io {'on' if direct_io else 'off'}, "
          f"x-ferry-incremental; file in {directory}; median of {runs} runs", flush=True)
    samples, disks, restores = {}, [], []
    for run in range(runs):
        disk = fio_mbps(directory, ws_bytes, 1, 32, 4 << 20, overwrite=True)
        disks.append(disk)
        time.sleep(SETTLE_SECONDS)
        for label, figures in asyncio.run(run_once(ferry_vmm, cmdline, memory, ws_bytes // 4096, channels, direct_io,
                                                   seconds, path)):
            samples.setdefault(label, []).append(figures)
        restored = asyncio.run(restore_once(ferry_vmm, cmdline, memory, channels, direct_io, False, path))
        restores.append(restored)
        path.unlink()
        print(f"  run {run + 1}: fio O_DIRECT (1 job, qd32, 4 MiB) write {disk['write']:.0f}, overwrite "
              f"{disk['overwrite']:.0f} MB/s; saves "
              + ", ".join(f"{label} {rs[-1]['total']} ms / {rs[-1]['written'] / MIB:.0f} MiB" for label, rs in samples.items())
              + f"; the last file restored in {restored['time']:.0f} ms, its guest beats with no verify error", flush=True)

    fresh, over = (statistics.median(d[k] for d in disks) for k in ("write", "overwrite"))
    print()
    print(f"incremental saves into one mapped-ram file (stopped unless said; disk O_DIRECT write {fresh:.0f} MB/s "
          f"into a fresh file, {over:.0f} MB/s over it again; median of {runs} runs)")
    print("(MB/s: median written over median total-time)")
    print("| save | guest wrote MiB | save wrote MiB | total ms | MB/s | % of disk | ms per 100 MiB | passes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, rs in samples.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("guest", "written", "total", "passes")}
        rate = med["written"] / med["total"] / 1e3 if med["total"] else 0
        per = med["total"] / (med["written"] / MIB) * 100 if med["written"] else 0
        disk = fresh if label == "full" else over
        print(f"| {label} | {med['guest'] / MIB:.0f} | {med['written'] / MIB:.0f} | {med['total']:.0f} | {rate:.0f} | "
              f"{rate / disk * 100:.0f} | {per:.0f} | {med['passes']:.0f} |")
    points = [(r["written"] / MIB, r["total"]) for label, rs in samples.items() if label.startswith("after") for r in rs]
    fixed, per_mib = fit(points) if len(points) > 1 else (0.0, 0.0)
    print(f"\nleast squares over the stopped incremental saves ({len(points)} points): total-time = {fixed:.0f} ms + "
          f"{per_mib * 100:.1f} ms per 100 MiB written (the disk overwriting alone: {100 * MIB / over / 1e3:.1f} ms per "
          f"100 MiB); the full save: {statistics.median(r['total'] for r in samples['full']):.0f} ms")
    print(f"every run's last file restored (cold page cache, no prealloc; a check, not a figure: it pays the first "
          f"touch of guest RAM) and its guest beat with no verify error; median {statistics.median(r['time'] for r in restores):.0f} ms")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({"disk_write": disks, "samples": samples, "restores": restores}, indent=1) + "\n")
    print(f"raw samples: {raw_path}")
