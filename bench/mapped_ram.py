"""Mapped-ram side by side (scenarios mapped-ram-save, mapped-ram-restore, mapped-ram of side_by_side.py).

Ferry and QEMU 10 save the identical exported guest into a `file:` with QEMU's
recipe and the identical flags (capability `mapped-ram`, `multifd` with
`multifd-channels`, parameter `direct-io`), stopped (`stop` first) and live, and
restore their own file (the two formats differ) into a destination started with
`-incoming defer`, the same capabilities and parameters, then `migrate-incoming
file:PATH`, with a cold page cache, without and with `-mem-prealloc` (and `--prealloc freed`: without, into
memory another process has just freed).  In the
same run: the disk's O_DIRECT sequential write and read bandwidth (fio, same file
system, same size) and the host's first-touch floor.  Raw samples go to a JSON file.
"""
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from side_by_side import (SETTLE_SECONDS, Console, ThreadSampler, check_restored_guest, connect_qmp, cpu_seconds,
                          first_touch_ms, migration_command, quit_all)

DESTINATION_MEMORY = {True: "-mem-prealloc", False: "no prealloc (cold)", "freed": "no prealloc, memory just freed"}

# ---------------------------------------------------------------------------------------------- host limits

def fio_mbps(directory, nbytes, jobs, iodepth, block, overwrite=False, allocated=False):
    """O_DIRECT sequential write, then read, of `nbytes` in one fresh file under `directory`, `block`
    bytes a request: `jobs` threads on disjoint equal parts (psync), or one job with libaio at `iodepth`.
    The file is created sparse, as QEMU's saves create theirs (--fallocate=none); with `allocated`, its
    blocks are allocated first (fallocate: unwritten extents), as Ferry's direct-io saves allocate their
    page areas before the first page.  With `overwrite`, the written file is written again before the
    read (blocks already written, as an incremental save finds them).  Returns MB/s by "write", "read"
    (and "overwrite")."""
    path = Path(directory) / "fio.bench"
    part = nbytes // jobs // block * block
    figures = {}
    try:
        for rw in ("write", "overwrite", "read") if overwrite else ("write", "read"):
            mode = "write" if rw == "overwrite" else rw
            command = ["fio", "--name=seq", f"--filename={path}", f"--rw={mode}", f"--bs={block}", "--direct=1",
                       f"--size={part}", f"--numjobs={jobs}", f"--offset_increment={part}", "--group_reporting",
                       "--fallocate=none", "--output-format=json"]
            command += ["--ioengine=libaio", f"--iodepth={iodepth}"] if iodepth > 1 else ["--ioengine=psync"]
            if rw == "write" and path.exists():
                path.unlink()
            if rw == "write" and allocated:
                with open(path, "wb") as created:
                    os.posix_fallocate(created.fileno(), 0, part * jobs)
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            job = json.loads(out[out.index("{"):])["jobs"][0]
            figures[rw] = job[mode]["bw_bytes"] / 1e6
    finally:
        if path.exists():
            path.unlink()
    return figures


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def cached_bytes(path):
    """Bytes of `path` in the page cache (util-linux fincore), or None without it."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------------------------- QMP recipe

async def set_mapped_ram(client, channels, direct_io):
    """QEMU's mapped-ram recipe: the capabilities, then the parameters (both sides, before migrate(-incoming))."""
    capabilities = [{"capability": "mapped-ram", "state": True}]
    if channels:
        capabilities.append({"capability": "multifd", "state": True})
    await client.execute("migrate-set-capabilities", {"capabilities": capabilities})
    parameters = {"direct-io": direct_io}
    if channels:
        parameters["multifd-channels"] = channels
    await client.execute("migrate-set-parameters", parameters)


async def wait_migration(vmm, client, proc, sampler, deadline, period=0.01):
    """Polls query-migrate until completed; returns (its answer, CPU-seconds of proc at that moment, when)."""
    while True:
        state = await client.execute("query-migrate")
        status = state.get("status")
        if status == "completed":
            sampler.stop()
            return state, cpu_seconds(proc.pid), time.monotonic()
        if status in ("failed", "cancelled"):
            raise RuntimeError(f"{vmm.name}: migration {status}: {state.get('error-desc', state)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{vmm.name}: no completion: {state}")
        await asyncio.sleep(period)


@contextlib.asynccontextmanager
async def vmm_process(vmm, memory, cmdline, incoming, flags, console_class=Console):
    """One VMM process on the guest (1 vCPU) and its QMP client: yields (process, console, client).
    A failure inside says whether the process has exited and what it last wrote on stderr; the
    process is killed if it is still there."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "qmp.sock"
        with open(Path(tmp) / "stderr", "w+b") as log:
            proc = subprocess.Popen(migration_command(vmm, memory, cmdline, sock, incoming, flags),
                                    stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
            try:
                console = console_class(proc)
                yield proc, console, await connect_qmp(sock)
            except Exception as error:
                raise RuntimeError(f"{error!r}{exit_report(vmm, proc, log)}") from error
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


async def wait_ready(vmm, console, ready_pages):
    """Waits (up to 120 s) until the guest has written `ready_pages` pages and beaten 10 times."""
    deadline = time.monotonic() + 120
    while console.pages() < ready_pages or len(console.beats) < 10:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{vmm.name}: guest never got ready ({console.pages()} pages)")
        await asyncio.sleep(0.05)


async def save_once(vmm, cmdline, memory, ready_pages, channels, direct_io, stopped, path):
    """One save into `path` (removed first): the guest is written once over its working set, then
    paused with `stop` (stopped) or left dirtying (live), then `migrate file:PATH`.  The source's CPU
    is sampled when `migrate` is issued and when it first reports completed."""
    async with vmm_process(vmm, memory, cmdline, None, []) as (proc, console, client):
        await set_mapped_ram(client, channels, direct_io)
        await client.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30, "downtime-limit": 300})
        await wait_ready(vmm, console, ready_pages)
        if stopped:
            await client.execute("stop")
        if path.exists():
            path.unlink()
        sampler = ThreadSampler(proc.pid)
        cpu_start, start = cpu_seconds(proc.pid), time.monotonic()
        await client.execute("migrate", {"uri": f"file:{path}"})
        info, cpu_end, end = await wait_migration(vmm, client, proc, sampler, time.monotonic() + 120)
        facts = path.stat()
        # What a buffered save left in the page cache, made durable (O_DIRECT saves: nothing).
        sync_start = time.monotonic()
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        sync_ms = (time.monotonic() - sync_start) * 1000
        await quit_all([client], [proc])
        ram = info.get("ram", {})
        return {"total": info["total-time"], "wall": (end - start) * 1000, "downtime": info.get("downtime", 0),
                "src_cpu": cpu_end - cpu_start, "apparent": facts.st_size, "allocated": facts.st_blocks * 512,
                "sync": sync_ms, "passes": ram.get("dirty-sync-count", 0), "transferred": ram.get("transferred", 0),
                "mbps": facts.st_blocks * 512 / info["total-time"] / 1000, "threads": sampler.spent()}


async def restore_once(vmm, cmdline, memory, channels, direct_io, prealloc, path):
    """Restores `path` into a fresh destination (`-incoming defer`), with the page cache dropped and
    the settle pause after it; times `migrate-incoming` -> query-status running (polled every 5 ms),
    checks the restored guest beats without verify errors.  prealloc: True (-mem-prealloc), False
    (cold memory), or "freed": no prealloc, and the guest's size touched and freed by another process
    just before the destination starts, as after a source on the same host quits (this host hands
    freed memory back to its own host about 2 s later; memory freed just now is warm)."""
    drop_caches()
    time.sleep(SETTLE_SECONDS)      # the dropped cache is freed memory too: let it go cold
    freed_ms = first_touch_ms(parse_size(memory)) if prealloc == "freed" else None
    started = time.monotonic()
    async with vmm_process(vmm, memory, cmdline, "defer", ["-mem-prealloc"] if prealloc is True else []) as (proc, console, client):
        ready = time.monotonic()
        await set_mapped_ram(client, channels, direct_io)
        cached = cached_bytes(path)
        sampler = ThreadSampler(proc.pid)
        cpu_start, start = cpu_seconds(proc.pid), time.monotonic()
        await client.execute("migrate-incoming", {"uri": f"file:{path}"})
        deadline = start + 120
        while True:
            status = (await client.execute("query-status"))["status"]
            if status == "running":
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                state = await client.execute("query-migrate") if proc.poll() is None else {}
                raise RuntimeError(f"{vmm.name}: restore never ran (status {status}): {state}")
            await asyncio.sleep(0.005)
        end, cpu_end = time.monotonic(), cpu_seconds(proc.pid)
        sampler.stop()
        info = await client.execute("query-migrate")
        await check_restored_guest(vmm.name, console, deadline)
        await quit_all([client], [proc])
        allocated = path.stat().st_blocks * 512
        return {"time": (end - start) * 1000, "dst_cpu": cpu_end - cpu_start, "status": info.get("status"),
                "mbps": allocated / (end - start) / 1e6, "startup": (ready - started) * 1000,
                "cached_before": cached, "threads": sampler.spent(), "freed_touch": freed_ms}


def exit_report(vmm, proc, log):
    """For a failure: whether the VMM process has exited (within 1 s), its status and its stderr's last lines."""
    try:
        status = proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return f"; {vmm.name} is still running"
    log.seek(0)
    tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
    return f"; {vmm.name} exited with status {status}: " + " | ".join(tail)


async def guarded(vmm, coroutine, errors, key):
    """Runs one measurement; a refusal or failure is recorded (first text per key) and yields None."""
    try:
        return await coroutine
    except Exception as error:      # noqa: BLE001  (QEMU's or Ferry's refusal text is the result)
        text = f"{type(error).__name__}: {error}"
        errors.setdefault(key, text)
        print(f"  {vmm.name} {key}: FAILED: {text}", flush=True)
        return None


# ---------------------------------------------------------------------------------------------- tables

def median_of(samples, key):
    values = [s[key] for s in samples if s is not None and s.get(key) is not None]
    return statistics.median(values) if values else None


def cell(value, form):
    return "-" if value is None else form.format(value)


def print_table(title, rows, columns, names, ratio_key):
    """rows: [(label, {vmm name: [samples]})]; columns: [(title, key, format, scale)].  Cells Ferry / QEMU."""
    print(title)
    short = {"ferry": "Ferry", "qemu": "QEMU"}
    print("| config | " + " | ".join(f"{t} {' / '.join(short[n] for n in names)}" for t, _, _, _ in columns)
          + (" | QEMU/Ferry |" if len(names) == 2 else " |"))
    print("| --- " * (len(columns) + 1 + (len(names) == 2)) + "|")
    for label, samples in rows:
        cells = []
        for _, key, form, scale in columns:
            values = [median_of(samples[n], key) for n in names]
            cells.append(" / ".join(cell(None if v is None else v * scale, form) for v in values))
        line = f"| {label} | " + " | ".join(cells)
        if len(names) == 2:
            f, q = (median_of(samples[n], ratio_key) for n in names)
            line += f" | {q / f:.2f}x" if f and q else " | -"
        print(line + " |")


# ---------------------------------------------------------------------------------------------- the scenario

def scenario_mapped_ram(ferry_vmm, qemu_vmm, vmms, runs, parts, memory, working_set, dirty_rate, channel_counts,
                        direct_ios, preallocs, directory, raw_path):
    """parts: a subset of {"stopped", "live", "restore"} (restore restores the live saves' files)."""
    ferry = ferry_vmm.ferry
    workload = f"dirty-rate={dirty_rate},working-set={working_set}"
    cmdline = subprocess.run([ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                             check=True, capture_output=True, text=True).stdout.strip()
    ws_bytes = parse_size(working_set)
    ready_pages = ws_bytes // 4096
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not shutil.which("fio"):
        raise SystemExit("fio is missing: apt-get install -y fio (bench/run.sh installs it)")
    df = shutil.disk_usage(directory)
    fs = subprocess.run(["df", "--output=source,fstype", str(directory)], capture_output=True, text=True).stdout.split("\n")[1]
    names = [v.name for v in vmms]
    configs = [(c, d) for c in channel_counts for d in direct_ios]
    print(f"scenario mapped-ram ({', '.join(sorted(parts))}): {memory} guest, 1 vCPU, workload {workload}; "
          f"files in {directory} ({fs.strip()}, {df.free >> 30} GiB free); max-bandwidth 100 GiB/s, downtime-limit "
          f"300 ms; median of {runs} runs", flush=True)
    raw = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "memory": memory, "workload": workload, "runs": runs,
           "directory": str(directory), "filesystem": fs.strip(), "configs": configs, "host": [], "samples": [],
           "errors": {}}
    samples = {}        # (part, channels, direct_io, prealloc) -> {vmm: [result or None]}

    def record(key, name, result, run):
        samples.setdefault(key, {n: [] for n in names})[name].append(result)
        raw["samples"].append({"run": run, "part": key[0], "channels": key[1], "direct-io": key[2],
                               "prealloc": key[3], "vmm": name, "result": result})

    vmm_of = {v.name: v for v in vmms}
    for run in range(runs):
        host = {"fio_4jobs": fio_mbps(directory, ws_bytes, 4, 1, 1 << 20), "fio_qd32": fio_mbps(directory, ws_bytes, 1, 32, 4 << 20),
                "fio_qd32_allocated": fio_mbps(directory, ws_bytes, 1, 32, 4 << 20, allocated=True)}
        time.sleep(SETTLE_SECONDS)
        host["touch"] = first_touch_ms(ws_bytes)
        time.sleep(SETTLE_SECONDS)
        host["touch_huge"] = first_touch_ms(ws_bytes, hugepage=True)
        raw["host"].append(host)
        print(f"  run {run + 1}: fio O_DIRECT 4 jobs write {host['fio_4jobs']['write']:.0f} read "
              f"{host['fio_4jobs']['read']:.0f} MB/s, 1 job qd32 4M write {host['fio_qd32']['write']:.0f} read "
              f"{host['fio_qd32']['read']:.0f} MB/s, allocated first: write {host['fio_qd32_allocated']['write']:.0f} MB/s; first touch {host['touch']:.0f} ms, "
              f"MADV_HUGEPAGE {host['touch_huge']:.0f} ms", flush=True)
        for channels, direct_io in configs:
            files = {}
            for part in ("stopped", "live"):
                if part == "stopped" and "stopped" not in parts:
                    continue
                if part == "live" and not parts & {"live", "restore"}:
                    continue
                for name in names:
                    path = directory / f"{name}-{part}-{channels}-{int(direct_io)}.mr"
                    time.sleep(SETTLE_SECONDS)
                    key = (part, channels, direct_io, None)
                    result = asyncio.run(guarded(vmm_of[name], save_once(vmm_of[name], cmdline, memory, ready_pages,
                                                                         channels, direct_io, part == "stopped", path),
                                                 raw["errors"], f"{name} save {part} c{channels} dio={direct_io}"))
                    record(key, name, result, run)
                    if part == "live" and result is not None:
                        files[name] = path
                    elif path.exists():
                        path.unlink()
            if "restore" in parts:
                for prealloc in preallocs:
                    for name in names:
                        if name not in files:
                            continue
                        key = ("restore", channels, direct_io, prealloc)
                        result = asyncio.run(guarded(vmm_of[name], restore_once(vmm_of[name], cmdline, memory, channels,
                                                                                direct_io, prealloc, files[name]),
                                                     raw["errors"], f"{name} restore c{channels} dio={direct_io} "
                                                                    f"prealloc={prealloc}"))
                        record(key, name, result, run)
            for path in files.values():
                path.unlink()
            print(f"  run {run + 1}: channels {channels}, direct-io {'on' if direct_io else 'off'} done", flush=True)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")

    h = raw["host"]
    fio = {f"{job} {rw}": statistics.median(x[job][rw] for x in h if job in x)
           for job in ("fio_4jobs", "fio_qd32", "fio_qd32_allocated") for rw in ("write", "read") if any(job in x for x in h)}
    disk_write = max(v for k, v in fio.items() if k.endswith("write"))
    disk_read = max(fio["fio_4jobs read"], fio["fio_qd32 read"])
    touch, touch_huge = statistics.median(x["touch"] for x in h), statistics.median(x["touch_huge"] for x in h)
    print()
    print(f"host, same run, medians: fio O_DIRECT sequential, {ws_bytes >> 20} MiB, in {directory}: "
          f"4 jobs (psync, 1 MiB blocks) write {fio['fio_4jobs write']:.0f} MB/s, read {fio['fio_4jobs read']:.0f} MB/s; "
          f"1 job (libaio, iodepth 32, 4 MiB blocks) write {fio['fio_qd32 write']:.0f} MB/s, read "
          f"{fio['fio_qd32 read']:.0f} MB/s; the same into a file allocated first (fallocate) write "
          f"{fio.get('fio_qd32_allocated write', 0):.0f} MB/s; the disk's limit below is the best of them")
    print(f"host, same run, medians: first touch of {ws_bytes >> 20} MiB fresh anonymous memory by one thread "
          f"{touch:.0f} ms ({ws_bytes / touch / 1e3:.0f} MB/s), with MADV_HUGEPAGE {touch_huge:.0f} ms "
          f"({ws_bytes / touch_huge / 1e3:.0f} MB/s)")
    mib = 1 / 2**20
    save_columns = [("total ms", "total", "{:.0f}", 1), ("MB/s", "mbps", "{:.0f}", 1),
                    ("% of disk write", "mbps", "{:.0f}", 100 / disk_write), ("apparent MiB", "apparent", "{:.0f}", mib),
                    ("allocated MiB", "allocated", "{:.0f}", mib), ("src CPU-s", "src_cpu", "{:.2f}", 1),
                    ("+fsync ms", "sync", "{:.0f}", 1)]
    for part in ("stopped", "live"):
        if part not in parts:
            continue
        columns = save_columns + ([("downtime ms", "downtime", "{:.0f}", 1), ("passes", "passes", "{:.0f}", 1)]
                                  if part == "live" else [])
        rows = [(f"multifd {c}, direct-io {'on' if d else 'off'}", samples[(part, c, d, None)]) for c, d in configs]
        print()
        print_table(f"{part} save (mapped-ram; MB/s = allocated bytes / total-time; disk write "
                    f"{disk_write:.0f} MB/s)", rows, columns, names, "total")
    if "restore" in parts:
        columns = [("ms to running", "time", "{:.0f}", 1), ("MB/s", "mbps", "{:.0f}", 1),
                   ("% of disk read", "mbps", "{:.0f}", 100 / disk_read), ("dst CPU-s", "dst_cpu", "{:.2f}", 1)]
        rows = [(f"multifd {c}, direct-io {'on' if d else 'off'}, {DESTINATION_MEMORY[p]}",
                 samples[("restore", c, d, p)]) for c, d in configs for p in preallocs]
        print()
        print_table(f"restore of the live save, cold page cache (migrate-incoming -> running; disk read "
                    f"{disk_read:.0f} MB/s; first-touch floor {touch:.0f} ms, {touch_huge:.0f} ms with MADV_HUGEPAGE)",
                    rows, columns, names, "time")
    if raw["errors"]:
        print()
        for key, text in raw["errors"].items():
            print(f"failed: {key}: {text}")
    print(f"\nraw samples: {raw_path}")


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)
