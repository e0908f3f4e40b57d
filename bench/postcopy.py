"""Postcopy side by side (scenario postcopy of side_by_side.py).

Ferry and QEMU 10 move the identical exported guest between two network
namespaces joined by a veth pair shaped to 1 Gbit/s with `tc tbf` on both ends
(burst 32 KiB, latency 1 ms: at most ~125 KB queued).  The guest (1 vCPU,
2 GiB) writes a 1.5 GiB working set at full speed and reads a random page of it
after each page written (`access=random`); once it has written it all, `migrate`
starts with `postcopy-ram` (and `postcopy-preempt` for the preempt rows), and
`migrate-start-postcopy` follows 1 s later.  With 4 KiB pages (anon for Ferry,
QEMU's default RAM) and 2 MiB pages (hugetlb on both).

Per run: total time, the switch's downtime, the postcopy phase (from
migrate-start-postcopy to completed), the page-request latency p50/p99/max
that Ferry's destination reports (`x-ferry-postcopy`; QEMU 10.0 has no such
figure), the guest's own slow accesses on the destination after the switch
(its SA histogram: p50/p99 of accesses that took 16 us or more, for both
VMMs), how many there were and the seconds they add up to, the MB/s the guest
wrote from its last heartbeat on the source to its last before the end (what
it got done while its memory moved: percentiles alone compare a guest that
faults often and briefly with one that faults rarely and waits long), the
largest heartbeat gap across the move, each process's CPU-seconds, and how long the
guest took to write its working set once (`guest ready s`: its first touch of its RAM).
Medians over the runs, Ferry and QEMU alternating.  A fresh hugetlb pool is touched once
before the 2 MiB runs (`warm_hugetlb_pool`).
"""
import asyncio
import json
import mmap
import re
import statistics
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path

from side_by_side import (SETTLE_SECONDS, ThreadSampler, connect_qmp, cpu_seconds, first_touch_ms, machine_cpu_seconds,
                          migration_command, migration_cpu, quit_all, thread_medians)
from snapshot import SlowAccesses, bucket_floor_us, histogram_delta, slow_max, slow_percentiles

NETNS = ("ferry-pc-src", "ferry-pc-dst")
VETH = ("ferry-pc-s", "ferry-pc-d")
ADDRESS = ("10.231.0.1", "10.231.0.2")
TBF = "rate 1gbit burst 32kb latency 1ms"
PORT = 4444


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def network_up():
    network_down()
    for ns in NETNS:
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", VETH[0], "netns", NETNS[0], "type", "veth", "peer", "name", VETH[1], "netns", NETNS[1])
    for ns, dev, address in zip(NETNS, VETH, ADDRESS):
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", *TBF.split())


def network_down():
    for ns in NETNS:
        sh("ip", "netns", "del", ns, check=False)


def network_counters():
    """Per namespace: packets the tbf qdisc dropped, TCP segments retransmitted, retransmission
    timeouts, tail loss probes (cumulative since the namespaces were made)."""
    counters = {}
    for ns, dev in zip(NETNS, VETH):
        qdisc = sh("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev).stdout
        dropped = re.search(r"dropped (\d+)", qdisc)
        nstat = sh("ip", "netns", "exec", ns, "nstat", "-az", "TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes",
                   check=False).stdout
        values = {name: int(value) for name, value in re.findall(r"^(\w+)\s+(\d+)", nstat, re.M)}
        counters[ns] = {"drops": int(dropped.group(1)) if dropped else 0, "retrans": values.get("TcpRetransSegs", 0),
                        "timeouts": values.get("TcpExtTCPTimeouts", 0), "probes": values.get("TcpExtTCPLossProbes", 0)}
    return counters


def counter_delta(before, after):
    return {ns: {k: after[ns][k] - before[ns][k] for k in after[ns]} for ns in after}


def socket_buffers():
    read = lambda name: Path(f"/proc/sys/net/ipv4/{name}").read_text().split()
    return {"tcp_wmem": read("tcp_wmem"), "tcp_rmem": read("tcp_rmem")}


MAP_HUGETLB = 0x40000


def warm_hugetlb_pool(pages):
    """Touches every page of a fresh hugetlb pool once (ms taken).  Here the host's host
    backs a huge page only when it is first written, at the first-touch floor: the first
    run on a fresh pool placed every received page into such memory, and its destination
    spent 15 more CPU-seconds in the kernel (run 1 of 2: 38.1 s in all, against 16.1 s
    for run 2 on the pool it had warmed).  Touched first, each run starts on the same pool,
    whichever VMM comes first."""
    start = time.monotonic()
    area = mmap.mmap(-1, pages << 21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB)
    try:
        area[::1 << 21] = b"\1" * pages
    finally:
        area.close()
    return (time.monotonic() - start) * 1000


def hugetlb_flags(vmm, memory):
    if vmm.name == "ferry":
        return ["--memory-backend", "hugetlb"]
    return ["-object", f"memory-backend-memfd,id=ram,hugetlb=on,hugetlbsize=2M,share=on,size={memory}",
            "-machine", "memory-backend=ram"]


@asynccontextmanager
async def vm_in(ns, vmm, memory, cmdline, incoming, flags):
    """One VMM process inside network namespace `ns`, its console and QMP client."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "qmp.sock"
        command = ["ip", "netns", "exec", ns] + migration_command(vmm, memory, cmdline, sock, incoming, flags)
        with open(Path(tmp) / "stderr", "w+b") as log:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
            try:
                console = SlowAccesses(proc)
                yield proc, console, await connect_qmp(sock)
            except Exception as error:
                log.seek(0)
                raise RuntimeError(f"{vmm.name}: {error!r}: {log.read().decode(errors='replace')[-800:]}") from error
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


async def postcopy_once(vmm, cmdline, memory, ready_pages, preempt, huge, pacing=None):
    flags = hugetlb_flags(vmm, memory) if huge else []
    async with vm_in(NETNS[0], vmm, memory, cmdline, None, flags) as (sproc, sconsole, src), \
               vm_in(NETNS[1], vmm, memory, cmdline, "defer", flags) as (dproc, dconsole, dst):
        capabilities = [{"capability": "postcopy-ram", "state": True}, {"capability": "postcopy-preempt", "state": preempt}]
        for client in (src, dst):
            await client.execute("migrate-set-capabilities", {"capabilities": capabilities})
        await src.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30})
        if pacing is not None and vmm.name == "ferry":
            await src.execute("migrate-set-parameters", {"x-ferry-postcopy-pacing": pacing})
        await dst.execute("migrate-incoming", {"uri": f"tcp:{ADDRESS[1]}:{PORT}"})
        booted = time.monotonic()
        deadline = booted + 300
        while sconsole.pages() < ready_pages or len(sconsole.slow) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{vmm.name}: guest never got ready ({sconsole.pages()} pages)")
            await asyncio.sleep(0.05)
        ready = time.monotonic() - booted
        await asyncio.sleep(SETTLE_SECONDS)
        cpu = [cpu_seconds(sproc.pid), cpu_seconds(dproc.pid)]
        machine = machine_cpu_seconds()
        samplers = [ThreadSampler(sproc.pid), ThreadSampler(dproc.pid)]
        network = network_counters()
        start = time.monotonic()
        await src.execute("migrate", {"uri": f"tcp:{ADDRESS[1]}:{PORT}"})
        await asyncio.sleep(1.0)
        switched = time.monotonic()
        precopy = (await src.execute("query-migrate")).get("ram", {})
        await src.execute("migrate-start-postcopy")
        # Ferry's background pace through postcopy (ms after the switch, MB/s), every 100 ms.
        pace_track = []
        while True:
            info = await src.execute("query-migrate")
            now = info.get("x-ferry-postcopy", {}).get("pacing-now")
            if now is not None and (not pace_track or time.monotonic() - switched >= pace_track[-1][0] / 1000 + 0.1):
                pace_track.append([round((time.monotonic() - switched) * 1000), round(now / 1e6, 1)])
            if info.get("status") == "completed":
                break
            if info.get("status") in ("failed", "cancelled") or time.monotonic() > start + 600:
                raise RuntimeError(f"{vmm.name}: {info.get('status')}: {info.get('error-desc', info)}")
            await asyncio.sleep(0.005)
        end = time.monotonic()
        while (await dst.execute("query-migrate")).get("status") != "completed":
            if time.monotonic() > end + 30:
                raise RuntimeError(f"{vmm.name}: the destination never completed")
            await asyncio.sleep(0.01)
        cpu = [cpu_seconds(sproc.pid) - cpu[0], cpu_seconds(dproc.pid) - cpu[1]]
        machine = machine_cpu_seconds() - machine
        threads = [sampler.spent() for sampler in samplers]
        network = counter_delta(network, network_counters())
        dinfo = await dst.execute("query-migrate")
        # The destination's cumulative SA lines: the first one after its guest started (it counts
        # from the switch, the guest's histogram having travelled with its memory), and one after the end.
        count = len(dconsole.slow)
        while len(dconsole.slow) == count and time.monotonic() < end + 3:
            await asyncio.sleep(0.02)
        before = [c for t, c in sconsole.slow if t <= switched]
        p50, p99, slow = slow_percentiles(before[-1] if before else [], dconsole.slow[-1][1] if dconsole.slow else [])
        last_source = max((b[0] for b in sconsole.beats if b[0] <= end), default=switched)
        first_destination = min((b[0] for b in dconsole.beats), default=end)
        progress = guest_progress(sconsole.beats, dconsole.beats, end)
        precopy_progress = window_progress(sconsole.beats, start, switched)
        written = moved_written(sconsole.beats, dconsole.beats, start, end)
        slowest = slow_max(before[-1] if before else [], dconsole.slow[-1][1] if dconsole.slow else [])
        stall = slow_seconds(before[-1] if before else [], dconsole.slow[-1][1] if dconsole.slow else [])
        errors = dconsole.errors
        await quit_all([src, dst], [sproc, dproc])
    if errors:
        raise RuntimeError(f"{vmm.name}: the guest reports {errors} verify errors after the move")
    latency = dinfo.get("x-ferry-postcopy", {}).get("request-latency-us", {})
    return {"total": info["total-time"], "downtime": info.get("downtime"), "postcopy_ms": (end - switched) * 1000,
            "requests": info["ram"].get("postcopy-requests"), "postcopy_mb": info["ram"].get("postcopy-bytes", 0) / 1e6,
            # What precopy had sent (and found zero) by the switch, and all the source sent:
            # postcopy's bytes are what precopy left, less what the guest rewrote before the switch.
            "precopy_mb": megabytes(precopy.get("transferred")), "precopy_zero": precopy.get("duplicate"),
            "sent_mb": megabytes(info["ram"].get("transferred")),
            "lat_p50": latency.get("p50"), "lat_p99": latency.get("p99"), "lat_max": latency.get("max"),
            "slow_p50": p50, "slow_p99": p99, "slow": slow, "slow_max": slowest, "guest_mb_s": progress, "stall_s": stall,
            "precopy_guest_mb_s": precopy_progress, "moved_written_mb": written,
            "gap": (first_destination - last_source) * 1000, "cpu_src": cpu[0], "cpu_dst": cpu[1],
            # The whole machine's busy time less both vCPUs' (a guest that is served sooner
            # runs more): the migration's cost wherever the kernel ran its part of it.
            "cpu_machine": machine - (cpu[0] - migration_cpu(threads[0])) - (cpu[1] - migration_cpu(threads[1])),
            "cpu_src_mig": migration_cpu(threads[0]), "cpu_dst_mig": migration_cpu(threads[1]), "threads": threads,
            "network": network, "drops": network[NETNS[0]]["drops"], "retrans": network[NETNS[0]]["retrans"],
            "pacing_mb_s": megabytes(info.get("x-ferry-postcopy", {}).get("pacing")),
            "pacing_lowest_mb_s": megabytes(info.get("x-ferry-postcopy", {}).get("pacing-lowest")),
            "yields": info.get("x-ferry-postcopy", {}).get("yields"),
            # Ferry's own figures whole, for the raw samples (dropped requests, urgent pages, the latency histogram).
            "ferry_source": info.get("x-ferry-postcopy"), "ferry_destination": dinfo.get("x-ferry-postcopy"),
            "pace_track": pace_track or None,
            # From the guest's start (QMP up) to its working set written once: its first touch of its RAM.
            # A destination placing pages into memory freed seconds before (the run before's) costs
            # 4 µs a page here; into memory freed long before, 29 (the host's host takes it back):
            # a guest slow to fill its RAM (Ferry's before it advised huge pages: 38 s against QEMU's
            # 2) migrates later, into colder memory, and its receiving thread spent 13 CPU-s, not 5.
            "ready_s": ready}


def megabytes(count):
    """Bytes (per second) in MB; None for a figure the VMM does not report (QEMU)."""
    return None if count is None else count / 1e6


def guest_progress(source_beats, destination_beats, end):
    """MB/s the guest wrote from its last heartbeat on the source to its last on the
    destination before the end: what it got done while its memory moved (beats are
    (host time, seq, guest time, pages written), the count travelling with the guest)."""
    after = [b for b in destination_beats if b[0] <= end]
    if not source_beats or not after or after[-1][0] <= source_beats[-1][0]:
        return None
    return (after[-1][3] - source_beats[-1][3]) * 4096 / (after[-1][0] - source_beats[-1][0]) / 1e6


def window_progress(beats, start, end):
    """MB/s the guest wrote between its first heartbeat after `start` and its last before
    `end` (host times): on the source, how fast it ran while precopy tracked its writes."""
    inside = [b for b in beats if start <= b[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][3] - inside[0][3]) * 4096 / (inside[-1][0] - inside[0][0]) / 1e6


def moved_written(source_beats, destination_beats, start, end):
    """MB the guest wrote from its first heartbeat after `migrate` (on the source) to its
    last before the end (on the destination): all it got done across the move."""
    first = [b for b in source_beats if b[0] >= start]
    last = [b for b in destination_beats if b[0] <= end]
    if not first or not last:
        return None
    return (last[-1][3] - first[0][3]) * 4096 / 1e6


def slow_seconds(before, after):
    """Seconds the guest spent in slow page writes between two cumulative histograms,
    each counted at its bucket's lower bound (so at most a quarter octave short)."""
    return sum(count * bucket_floor_us(i) for i, count in enumerate(histogram_delta(before, after))) / 1e6


def median(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def cell(value, form="{:.0f}"):
    return "-" if value is None else form.format(value)


def scenario_postcopy(ferry_vmm, qemu_vmm, vmms, runs, memory, working_set, modes, raw_path, pacing=None):
    cmdline_of = {}
    for vmm in vmms:
        cmdline_of[vmm.name] = subprocess.run(
            [vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", f"dirty-rate=max,working-set={working_set},access=random"],
            check=True, capture_output=True, text=True).stdout.strip()
    ws_bytes = int(working_set.rstrip("MG")) << (30 if working_set.endswith("G") else 20)
    ready_pages = ws_bytes // 4096
    touch = first_touch_ms(ws_bytes)
    print(f"\n== postcopy: {memory} guest, {working_set} written at full speed with random reads, 1 vCPU; "
          f"veth between netns, tbf {TBF}; socket buffers {socket_buffers()}; "
          f"Ferry's x-ferry-postcopy-pacing {'its default' if pacing is None else pacing}; "
          f"first touch of {working_set}: {touch:.0f} ms ({ws_bytes / touch / 1e3:.0f} MB/s)", flush=True)
    huge_needed = 2 * (int(memory.rstrip('G')) << 9) + 16 if memory.endswith("G") else 0
    results = {}
    network_up()
    try:
        for mode in modes:
            preempt, huge = "preempt" in mode, mode.endswith("2M")
            if huge:
                Path("/proc/sys/vm/nr_hugepages").write_text(f"{huge_needed}\n")
                print(f"  {mode}: hugetlb pool of {huge_needed} pages touched once before the runs in "
                      f"{warm_hugetlb_pool(huge_needed):.0f} ms", flush=True)
            try:
                for run in range(runs):
                    for vmm in vmms:
                        try:
                            sample = asyncio.run(postcopy_once(vmm, cmdline_of[vmm.name], memory, ready_pages, preempt, huge,
                                                              pacing))
                        except Exception as error:      # noqa: BLE001  (the failure is the result)
                            print(f"  {mode} {vmm.name} run {run + 1}: FAILED: {error}", flush=True)
                            continue
                        results.setdefault((mode, vmm.name), []).append(sample)
                        print(f"  {mode} {vmm.name} run {run + 1}: " + json.dumps({k: v for k, v in sample.items() if k != "pace_track"}), flush=True)
            finally:
                if huge:
                    Path("/proc/sys/vm/nr_hugepages").write_text("0\n")
    finally:
        network_down()
    columns = [("total ms", "total"), ("downtime", "downtime"), ("postcopy ms", "postcopy_ms"), ("precopy MB", "precopy_mb"),
               ("precopy zero pages", "precopy_zero"), ("postcopy MB", "postcopy_mb"), ("sent MB", "sent_mb"), ("requests", "requests"),
               ("req p50 us", "lat_p50"), ("req p99 us", "lat_p99"), ("req max us", "lat_max"),
               ("guest slow p50 us", "slow_p50"), ("guest slow p99 us", "slow_p99"), ("guest slow max us", "slow_max"), ("slow writes", "slow"),
               ("guest stalled s", "stall_s"), ("guest MB/s written", "guest_mb_s"),
               ("guest MB/s in precopy", "precopy_guest_mb_s"), ("guest MB written in the move", "moved_written_mb"), ("gap ms", "gap"),
               ("CPU-s src", "cpu_src"), ("CPU-s dst", "cpu_dst"), ("mig CPU-s src", "cpu_src_mig"),
               ("mig CPU-s dst", "cpu_dst_mig"), ("machine CPU-s less vCPUs", "cpu_machine"), ("tbf drops src", "drops"),
               ("TCP retrans src", "retrans"),
               ("pace MB/s", "pacing_mb_s"), ("lowest pace MB/s", "pacing_lowest_mb_s"), ("yields", "yields"),
               ("guest ready s", "ready_s")]
    print("\n| mode | VMM | " + " | ".join(name for name, _ in columns) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in columns) + " |")
    for mode in modes:
        for vmm in vmms:
            samples = results.get((mode, vmm.name), [])
            forms = {"cpu_src": "{:.1f}", "cpu_dst": "{:.1f}", "cpu_src_mig": "{:.1f}", "cpu_dst_mig": "{:.1f}",
                     "cpu_machine": "{:.1f}", "stall_s": "{:.2f}", "guest_mb_s": "{:.1f}", "precopy_guest_mb_s": "{:.1f}", "ready_s": "{:.1f}"}
            print(f"| {mode} | {vmm.name} ({len(samples)}) | "
                  + " | ".join(cell(median(samples, key), forms.get(key, "{:.0f}")) for _, key in columns) + " |")
    for mode in modes:
        for vmm in vmms:
            samples = results.get((mode, vmm.name), [])
            if samples:
                print(f"threads, {mode}, {vmm.name} (CPU-s, median; src | dst): {thread_medians(samples)}")
    print("(mig CPU-s: the process's threads other than its vCPUs, from `migrate` to the source's completion; the "
          "kernel's network work for the other side's packets lands on whichever thread runs it)")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps({f"{m}/{v}": s for (m, v), s in results.items()}, indent=1))
    print(f"raw samples: {raw_path}")
