"""Lazy restore (scenario lazy-restore of side_by_side.py): Ferry's x-ferry-lazy-restore against
Ferry's and QEMU 10's eager mapped-ram restores of the same guest.

Each VMM saves its own guest (2 GiB, 1 vCPU, 1536 MiB written once, then idle; a live save) into a
mapped-ram file with 4 multifd channels, fsynced; each restore starts from a dropped page cache
on an `-incoming defer` machine with the same settings, and measures `migrate-incoming` to
query-status `running` (polled every 5 ms) and, for the lazy restore, to every page loaded
(`x-ferry-lazy-restore` `load-time`, and the faults it served).  The restored guest must beat
without verify errors.  Medians over the runs.
"""
import asyncio
import json
import statistics
import subprocess
import time
from pathlib import Path

from mapped_ram import drop_caches, save_once, set_mapped_ram, vmm_process
from side_by_side import SETTLE_SECONDS, check_restored_guest, first_touch_ms

CHANNELS = 4


async def restore(vmm, cmdline, path, lazy):
    drop_caches()
    time.sleep(SETTLE_SECONDS)
    async with vmm_process(vmm, "2G", cmdline, "defer", []) as (proc, console, client):
        await set_mapped_ram(client, CHANNELS, False)
        if lazy:
            await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ferry-lazy-restore", "state": True}]})
        start = time.monotonic()
        await client.execute("migrate-incoming", {"uri": f"file:{path}"})
        deadline = start + 120
        while (await client.execute("query-status"))["status"] != "running":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{vmm.name}: the restore never ran: {await client.execute('query-migrate')}")
            await asyncio.sleep(0.005)
        running = (time.monotonic() - start) * 1000
        result = {"running": running, "loaded": running, "faults": 0}
        if lazy:
            while True:
                info = await client.execute("query-migrate")
                lazy_info = info.get("x-ferry-lazy-restore") or {}
                if lazy_info.get("complete"):
                    result.update(loaded=lazy_info["load-time"] + running, faults=lazy_info["faults"])
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lazy restore never completed: {info}")
                await asyncio.sleep(0.01)
        await check_restored_guest(vmm.name, console, deadline)
        await client.execute("quit")
        proc.wait(timeout=20)
        return result


def scenario_lazy_restore(ferry_vmm, qemu_vmm, vmms, runs, directory, raw_path):
    workload = "dirty-rate=0,working-set=1536M"
    cmdline = subprocess.run([ferry_vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                             check=True, capture_output=True, text=True).stdout.strip()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"scenario lazy-restore: 2 GiB guest, 1 vCPU, {workload}, live save of the idle guest with mapped-ram + {CHANNELS} channels, "
          f"restores from a dropped page cache; median of {runs} runs; first touch of 1.5 GiB {first_touch_ms(1536 << 20):.0f} ms")
    samples = {}
    for run in range(runs):
        for vmm in vmms:
            path = directory / f"lazy-{vmm.name}.mapped"
            asyncio.run(save_once(vmm, cmdline, "2G", 393216, CHANNELS, False, False, path))   # live (idle guest): it restores running
            modes = [("eager", False)] + ([("lazy", True)] if vmm.name == "ferry" else [])
            for mode, lazy in modes:
                result = asyncio.run(restore(vmm, cmdline, path, lazy))
                samples.setdefault(f"{vmm.name}/{mode}", []).append(result)
            path.unlink()
    print(f"{'':>16} {'to running ms':>14} {'all loaded ms':>14} {'faults':>8}")
    for key, rs in samples.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        name = key.replace("ferry", "Ferry").replace("qemu", "QEMU 10")
        print(f"{name:>16} {m['running']:14.0f} {m['loaded']:14.0f} {m['faults']:8.0f}")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(samples, indent=1))
    print(f"raw samples: {raw_path}")
