#!/usr/bin/env python3
"""Endurance: one dirtying guest migrated hop after hop between ferry processes.

Each hop starts a new `ferry run --incoming` process, migrates the guest from
the current process to it over loopback (TCP and Unix sockets alternating),
checks both sides' `query-migrate`, and quits the old process.  Reports, per
hop, the downtime and total time Ferry measured and the RSS of the VMM that
received the guest; at the end, failures, the downtime distribution, and
whether RSS stayed flat.  The last process quits with --verify-on-exit, so the
guest's memory is checked page by page after every hop it went through.

Usage: bench/endurance.py [--hops 200] [--memory 256M] [--cpus 2]
                          [--workload dirty-rate=32M,working-set=64M] [--ferry PATH]
"""
import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Process:
    def __init__(self, args, tmp, name, extra):
        self.sock = tmp / f"{name}.qmp"
        self.serial = tmp / f"{name}.serial"
        cmd = [args.ferry, "run", "--memory", args.memory, "--cpus", str(args.cpus), "--qmp", f"unix:{self.sock}",
               "--serial", f"file:{self.serial}", "--verify-on-exit"] + extra
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.qmp = QMPClient(name)

    async def connect(self):
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ferry did not start: {self.proc.stderr.read().decode()}")
            await asyncio.sleep(0.01)
        await self.qmp.connect(str(self.sock))
        return self

    async def quit(self):
        try:
            await self.qmp.execute("quit")
            await self.qmp.disconnect()
        except Exception:
            pass
        _, stderr = self.proc.communicate(timeout=60)
        return stderr.decode()


async def wait(client, wanted, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        info = await client.execute("query-migrate")
        if info.get("status") in wanted:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(info)
        await asyncio.sleep(0.02)


async def run(args):
    hops, failures = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        current = await Process(args, tmp, "vm0", ["--workload", args.workload]).connect()
        await asyncio.sleep(1.0)
        for hop in range(1, args.hops + 1):
            uri = f"unix:{tmp}/m{hop}.sock" if hop % 2 == 0 else "tcp:127.0.0.1:0"
            nxt = await Process(args, tmp, f"vm{hop}", ["--incoming", "defer"]).connect()
            await nxt.qmp.execute("migrate-incoming", {"uri": uri})
            if uri.startswith("tcp"):
                port = (await nxt.qmp.execute("query-migrate"))["socket-address"][0]["port"]
                uri = f"tcp:127.0.0.1:{port}"
            await current.qmp.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30})
            await current.qmp.execute("migrate", {"uri": uri})
            source = await wait(current.qmp, ("completed", "failed", "cancelled"))
            destination = await wait(nxt.qmp, ("completed", "failed"))
            ok = source["status"] == "completed" and destination["status"] == "completed"
            running = (await nxt.qmp.execute("query-status"))["status"]
            if not ok or running != "running":
                failures.append((hop, source.get("error-desc"), destination.get("error-desc"), running))
            rss = rss_kib(nxt.proc.pid)
            hops.append((hop, source.get("downtime", -1), source.get("total-time", -1), rss))
            print(f"hop {hop:4d}: {source['status']:>9} downtime {source.get('downtime', -1):4d} ms "
                  f"total {source.get('total-time', -1):5d} ms  dest RSS {rss // 1024} MiB", flush=True)
            stderr = await current.quit()
            if current.proc.returncode != 0:
                failures.append((hop, "source exited", current.proc.returncode, stderr[-300:]))
            if not ok:
                await nxt.quit()
                break
            current = nxt
        await asyncio.sleep(0.5)
        stderr = await current.quit()
        verify = re.search(r"ferry: verify: .*", stderr)
        clean = re.search(r"(\d+) failed.*guest-reported verify failures: (\d+)", stderr)
        verified = bool(clean) and clean[1] == "0" and clean[2] == "0"
    downtimes = [h[1] for h in hops if h[1] >= 0]
    rss = [h[3] for h in hops]
    print()
    print(f"hops: {len(hops)}, failures: {len(failures)}")
    for failure in failures:
        print("  failed:", failure)
    if downtimes:
        print(f"downtime ms: median {statistics.median(downtimes)}, max {max(downtimes)}, min {min(downtimes)}")
    if rss:
        tenth = max(1, len(rss) // 10)
        first, last = statistics.median(rss[:tenth]), statistics.median(rss[-tenth:])
        print(f"destination RSS MiB: first tenth {first / 1024:.0f}, last tenth {last / 1024:.0f}, "
              f"max {max(rss) / 1024:.0f} ({(last - first) / 1024:+.1f} MiB over {len(rss)} hops)")
    print(f"final verify: {verify[0] if verify else 'missing'} -> {'clean' if verified else 'NOT CLEAN'}")
    return 0 if not failures and verified else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", type=int, default=200)
    parser.add_argument("--memory", default="256M")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--workload", default="dirty-rate=32M,working-set=64M")
    parser.add_argument("--ferry", default=str(ROOT / ".build" / "release" / "ferry"))
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
