"""Free page hints side by side (scenario free-page-hints of side_by_side.py).

Ferry and QEMU 10 migrate the identical exported guest (1 vCPU, 2 GiB, both
VMMs with -mem-prealloc: the guest's first touch of fresh memory is very slow
on this host and is not what is measured) over loopback TCP, max-bandwidth
100 GiB/s, downtime-limit 300 ms, each with its own virtio-balloon
(Ferry: `--device virtio-balloon,free-page-hint=on|off`; QEMU: microvm with
acpi=off, `-global virtio-mmio.force-legacy=false`, an iothread and
`-device virtio-balloon-device,free-page-hint=on|off,iothread=io0`).

Workloads (each `--workload` of the embedded guest, whose own balloon driver
takes part in hinting):
  idle   working-set=1536M,free=1G: 1.5 GiB touched once, 1 GiB of it freed, idle
  churn  the same, dirtying the remaining 512 MiB at 64 MB/s and churning 256 MiB
         (a 4 MiB block allocated, written, verified and freed every 100 ms)

Per run: total time, bytes sent, downtime, each process's CPU-seconds, and
(Ferry) the pages hints kept out.  Medians over the runs, the four
configurations alternating.  The machine's floors (first touch, loopback TCP)
are printed beside them.
"""
import asyncio
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from side_by_side import SETTLE_SECONDS, connect_qmp, first_touch_ms, loopback_gbps, migrate_and_time, quit_all

WORKLOADS = {
    "idle": "dirty-rate=0,working-set=1536M,free=1G",
    "churn": "dirty-rate=64M,working-set=1536M,free=1G,churn=256M",
}
FREED = 1 << 30


class Serial:
    """A VMM's serial lines, read on a thread."""

    def __init__(self, proc):
        self.text = ""
        self.lock = threading.Lock()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            with self.lock:
                self.text += line.decode(errors="replace")

    def has(self, pattern):
        with self.lock:
            return re.search(pattern, self.text) is not None

    def errors(self):
        with self.lock:
            found = re.findall(r"err=(\d+)", self.text)
        return int(found[-1]) if found else None

    def beats(self):
        with self.lock:
            return len(re.findall(r"^HB ", self.text, re.M))


def command(vmm, cmdline, sock, hints, incoming=None):
    flag = "on" if hints else "off"
    if vmm.name == "ferry":
        argv = [vmm.ferry, "run", "--memory", "2G", "--cpus", "1", "--kernel", vmm.image, "--append", cmdline,
                "--serial", "stdio", "--qmp", f"unix:{sock}", "-mem-prealloc",
                "--device", f"virtio-balloon,free-page-hint={flag}"]
        return argv + (["--incoming", incoming] if incoming else [])
    from qemu_microvm import QBOOT, QEMU_CPU
    argv = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", QEMU_CPU, "-m", "2G", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-bios", QBOOT,
            "-kernel", vmm.image, "-append", cmdline, "-qmp", f"unix:{sock},server=on,wait=off", "-mem-prealloc",
            "-global", "virtio-mmio.force-legacy=false", "-object", "iothread,id=io0",
            "-device", f"virtio-balloon-device,free-page-hint={flag},iothread=io0"]
    return argv + (["-incoming", incoming] if incoming else [])


async def migrate_once(vmm, cmdline, hints, port):
    with tempfile.TemporaryDirectory() as tmp:
        src_sock, dst_sock = Path(tmp) / "src.qmp", Path(tmp) / "dst.qmp"
        uri = f"tcp:127.0.0.1:{port}"
        procs = []
        try:
            for sock, incoming in ((src_sock, None), (dst_sock, uri)):
                procs.append(subprocess.Popen(command(vmm, cmdline, sock, hints, incoming), stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            serials = [Serial(p) for p in procs]
            clients = [await connect_qmp(sock) for sock in (src_sock, dst_sock)]
            src, dst = clients
            deadline = time.monotonic() + 180
            while not (serials[0].has(r"FREE pages=") and serials[0].has(r"BL ready")):
                assert time.monotonic() < deadline, f"{vmm.name}: the guest never freed its memory"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            await src.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30, "downtime-limit": 300})
            info, cpu_start, cpu_end = await migrate_and_time(vmm.name, clients, procs, uri, deadline + 120)
            beats = serials[1].beats()
            while serials[1].beats() < beats + 3:
                assert time.monotonic() < deadline + 150, f"{vmm.name}: the guest does not beat on the destination"
                await asyncio.sleep(0.05)
            errors = serials[1].errors()
            await quit_all(clients, procs)
            assert errors == 0, f"{vmm.name}: the guest's verifier found {errors} bad pages on the destination"
            skipped = (info.get("x-ferry-free-page-hints") or {}).get("skipped-bytes")
            return {"total": info["total-time"], "downtime": info["downtime"], "transferred": info["ram"]["transferred"],
                    "src_cpu": cpu_end[0] - cpu_start[0], "dst_cpu": cpu_end[1] - cpu_start[1],
                    "skipped": skipped if skipped is not None else float("nan")}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def scenario_free_page_hints(ferry_vmm, qemu_vmm, vmms, runs, workloads, raw):
    print(f"scenario free-page-hints: 2 GiB, 1 vCPU, -mem-prealloc, loopback TCP, max-bandwidth 100 GiB/s, "
          f"downtime-limit 300 ms, median of {runs} runs")
    print(f"machine: first touch of 1 GiB {first_touch_ms(1 << 30):.0f} ms; loopback TCP {loopback_gbps(1):.1f} Gbit/s")
    samples = {}
    for workload in workloads:
        cmdline = subprocess.run([ferry_vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", WORKLOADS[workload]],
                                 check=True, capture_output=True, text=True).stdout.strip()
        configs = [(vmm, hints) for hints in (False, True) for vmm in vmms]
        for i in range(runs):
            for n, (vmm, hints) in enumerate(configs):
                time.sleep(SETTLE_SECONDS)
                result = asyncio.run(migrate_once(vmm, cmdline, hints, 48000 + 10 * i + n))
                samples.setdefault(f"{workload}/{vmm.name}/{'on' if hints else 'off'}", []).append(result)
        print(f"\nworkload {workload} ({WORKLOADS[workload]})")
        print(f"{'':>14} {'hints':>6} {'total ms':>9} {'MiB sent':>9} {'downtime':>9} {'src CPU-s':>10} {'dst CPU-s':>10} {'skipped':>9}")
        medians = {}
        for vmm, hints in configs:
            rs = samples[f"{workload}/{vmm.name}/{'on' if hints else 'off'}"]
            m = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
            medians[(vmm.name, hints)] = m
            # Ferry's x-ferry-free-page-hints skipped-bytes: every hinted page (free RAM past the working set included).
            kept = "" if m["skipped"] != m["skipped"] else f"{m['skipped'] / 2**20:5.0f} MiB"
            print(f"{'Ferry' if vmm.name == 'ferry' else 'QEMU 10':>14} {'on' if hints else 'off':>6} {m['total']:9.0f} "
                  f"{m['transferred'] / 2**20:9.0f} {m['downtime']:9.0f} {m['src_cpu']:10.2f} {m['dst_cpu']:10.2f} {kept:>9}")
        for name in [v.name for v in vmms]:
            off, on = medians[(name, False)], medians[(name, True)]
            print(f"  {name}: hints keep {(off['transferred'] - on['transferred']) / FREED * 100:.0f}% of the freed 1 GiB out "
                  f"and save {(1 - on['total'] / off['total']) * 100:.0f}% of the time")
        if len(vmms) == 2:
            f, q = medians[("ferry", True)], medians[("qemu", True)]
            print(f"  with hints: QEMU/Ferry total time {q['total'] / f['total']:.2f}x")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(samples, indent=1))
    print(f"raw samples: {raw}")
