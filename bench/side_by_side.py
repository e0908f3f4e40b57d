#!/usr/bin/env python3
"""Side-by-side benchmark harness: the same scenario on Ferry and on QEMU 10
(microvm, the identical exported guest and command line), both driven over QMP
with the qemu.qmp library, in one run.  Prints each figure with the ratio.

Scenarios (more arrive with later capabilities):
  boot           time from process start to the guest's first heartbeat, 1 and 2 vCPUs, 2 GiB
  migrate-idle   precopy over loopback TCP, 2 GiB guest with 1.5 GiB of non-zero memory, idle
  migrate-dirty  the same guest dirtying a 256 MiB working set as fast as it can
  migrate        both migration scenarios
  multifd-idle   the idle migration with multifd: 1, 2, 4 channels, without and with zstd,
                 without and with -mem-prealloc on both sides (--channels, --compression, --prealloc narrow it)
  multifd-dirty  the same for the dirtying guest
  multifd        both multifd scenarios (not part of `all`: 24 configurations, long)
  mapped-ram-save     saves into a file with mapped-ram (+ multifd, direct-io off/on), stopped and live
  mapped-ram-restore  the live save, then its restore with a cold page cache, without and with -mem-prealloc
                      (--prealloc off,freed,on: freed = into memory another process has just freed)
  mapped-ram          both (bench/mapped_ram.py; with fio's O_DIRECT figures and the first-touch floor)
  free-page-hints     idle and churning guests that freed 1 of 1.5 GiB, hints off and on, each VMM with its
                      own virtio-balloon (bench/free_page_hints.py)
  mapped-ram-incremental  Ferry's x-ferry-incremental saves after 0.25, 1 and 4 s of dirtying against its full save
                      and the disk (bench/incremental.py; QEMU has none)
  lazy-restore        Ferry's x-ferry-lazy-restore against eager mapped-ram restores on Ferry and QEMU 10:
                      time to running and to every page loaded (bench/lazy_restore.py)

Every migration reports total time, downtime (as the VMM reports it),
throughput, and the guest-observed pause: the largest gap between two
heartbeats as the host saw their serial lines arrive, across the move.  The
multifd scenarios add each process's CPU time (utime + stime from
/proc/PID/stat), the host's first-touch floor and loopback TCP throughput.

Usage: bench/run.sh [--runs N] [--scenario boot|migrate-idle|migrate-dirty|migrate|all|multifd-idle|multifd-dirty|multifd
                                         |mapped-ram-save|mapped-ram-restore|mapped-ram]
"""
import argparse
import asyncio
import mmap
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.protocol import ConnectError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from qemu_microvm import microvm_command  # noqa: E402  (the tests' QEMU command line, shared)


class VMM:
    """How to start one VMM on the exported guest with a QMP socket."""

    def __init__(self, name, ferry, image):
        self.name, self.ferry, self.image = name, ferry, image

    def command(self, memory, cpus, cmdline, sock):
        if self.name == "ferry":
            return [self.ferry, "run", "--memory", memory, "--cpus", str(cpus), "--kernel", self.image,
                    "--append", cmdline, "--serial", "stdio", "--qmp", f"unix:{sock}"]
        # debug-threads: QEMU's threads get their names (CPU 0/KVM, mig/src/main, mig/src/send_0...),
        # which Ferry's threads share where they do the same work: per-thread CPU compares like with like.
        return microvm_command("qemu-system-x86_64", self.image, memory, cpus, cmdline) + [
            "-name", "bench,debug-threads=on", "-qmp", f"unix:{sock},server=on,wait=off"]


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


class Console:
    """Reads a VMM's serial output on a thread, stamping each heartbeat line with host time."""

    def __init__(self, proc):
        import threading
        self.beats = []     # (host monotonic seconds, sequence, guest ms, pages)
        self.errors = 0     # the guest's verify errors (err=) in its latest heartbeat
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        import re
        pattern = re.compile(rb"HB (\d+) t=(\d+) pages=(\d+)(?: err=(\d+))?")
        for line in stream:
            match = pattern.search(line)
            if match:
                self.beats.append((time.monotonic(), int(match[1]), int(match[2]), int(match[3])))
                self.errors = int(match[4] or 0)

    def pages(self):
        return self.beats[-1][3] if self.beats else 0


ONLY = {"ferry", "qemu"}     # --only narrows the migration scenarios to one VMM (for profiling, no ratio)
PREALLOC = []
SETTLE_SECONDS = 4     # ["-mem-prealloc"] with --mem-prealloc: both VMMs allocate guest RAM up front


def migration_command(vmm, memory, cmdline, sock, incoming=None, prealloc=None):
    command = vmm.command(memory, 1, cmdline, sock) + (PREALLOC if prealloc is None else prealloc)
    if incoming:
        command += ["--incoming", incoming] if vmm.name == "ferry" else ["-incoming", incoming]
    return command


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of the whole process (all its threads, living and exited), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_seconds():
    """CPU-seconds the whole machine spent busy (user, nice, system, irq and softirq of
    /proc/stat's cpu line): the kernel's network work for a veth pair runs in softirq on
    whichever thread or idle CPU it interrupts, so the processes' own times miss part of it."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / CLOCK_TICKS


def thread_cpu(pid):
    """{tid: (thread name, utime + stime seconds)} of every living thread of `pid`."""
    threads = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                text = stat.read()
        except (FileNotFoundError, ProcessLookupError):
            continue        # exited meanwhile (a dying thread's stat answers ESRCH)
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return threads


class ThreadSampler:
    """Per-thread CPU of one process over an interval.  A thread of the harness samples every 20 ms
    (a VMM slow to answer QMP during a migration does not thin the samples; more often costs the
    machine's two cores more than it tells), and `stop()` takes the last.  A thread that exits during
    the interval counts with its last sample; what it spent after that (the process's total, which
    counts ended threads, minus the threads' sum) is reported as `(ended between samples)`."""

    PERIOD = 0.02
    ENDED = "(ended between samples)"

    def __init__(self, pid):
        import threading
        self.pid, self.start, self.last = pid, thread_cpu(pid), {}
        self.total_start, self.total_end = cpu_seconds(pid), None
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.wait(self.PERIOD):
            self.sample()

    def sample(self):
        threads = thread_cpu(self.pid)
        with self.lock:
            self.last.update(threads)

    def stop(self):
        """Ends the interval: the last sample."""
        if not self.stopped.is_set():
            self.stopped.set()
            self.thread.join()
            self.sample()
            try:
                self.total_end = cpu_seconds(self.pid)
            except (FileNotFoundError, ProcessLookupError):
                pass

    def spent(self):
        """[thread name, CPU-seconds] spent in the interval by each thread that spent any, largest first
        (QEMU names its threads with -name debug-threads=on, which the harness passes). Ends the interval."""
        self.stop()
        spent = [[name, round(seconds - self.start.get(tid, (name, 0.0))[1], 3)] for tid, (name, seconds) in self.last.items()]
        if self.total_end is not None:
            spent.append([self.ENDED, round(self.total_end - self.total_start - sum(s for _, s in spent), 3)])
        return sorted((entry for entry in spent if entry[1] > 0.005), key=lambda entry: -entry[1])


def is_vcpu_thread(name):
    """Both VMMs name a vCPU thread as QEMU does: `CPU N/KVM`."""
    return name.startswith("CPU ") and name.endswith("/KVM")


def migration_cpu(threads):
    """CPU-seconds of the threads that are not vCPUs, from `ThreadSampler.spent()`: what the
    migration cost the process, its guest's own work left out."""
    return sum(seconds for name, seconds in threads if not is_vcpu_thread(name))


async def connect_qmp(sock):
    """A QMP client on `sock`.  The socket file appears at bind, before the listen (and
    -mem-prealloc may come between them): a refused connect is retried for 30 s."""
    for attempt in range(3000):
        if sock.exists():
            client = QMPClient("bench")
            try:
                await client.connect(str(sock))
                return client
            except ConnectError:
                if attempt == 2999:
                    raise
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no QMP socket at {sock}")


async def check_restored_guest(vmm_name, console, deadline):
    """A restored guest beats three more times by `deadline` and its verifier reports no error; raises otherwise."""
    beats = len(console.beats)
    while len(console.beats) < beats + 3:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{vmm_name}: the restored guest does not beat")
        await asyncio.sleep(0.05)
    if console.errors:
        raise RuntimeError(f"{vmm_name}: the restored guest reports {console.errors} verify errors")


async def quit_all(clients, procs):
    """`quit` on every client, then waits for the processes."""
    for client in clients:
        try:
            await client.execute("quit")
            await client.disconnect()
        except EOFError:
            pass    # QEMU may close the socket before its reply to quit
    for proc in procs:
        proc.wait(timeout=20)


async def migrate_and_time(name, clients, procs, uri, deadline):
    """`migrate` on clients[0] to `uri`, then polls both sides until each says completed;
    each process's CPU time is read when `migrate` is issued and the moment that process
    first says completed (a destination's guest runs from then on, and a dirtying one spins
    a core).  Returns (the source's query-migrate, CPU at start, CPU at completion)."""
    cpu_start = [cpu_seconds(p.pid) for p in procs]
    samplers = [ThreadSampler(p.pid) for p in procs]
    await clients[0].execute("migrate", {"uri": uri})
    cpu_end, info = [None, None], None
    while None in cpu_end:
        for i, client in enumerate(clients):
            if cpu_end[i] is None:
                state = await client.execute("query-migrate")
                if state.get("status") == "completed":
                    cpu_end[i] = cpu_seconds(procs[i].pid)
                    samplers[i].stop()
                    info = state if i == 0 else info
                assert state.get("status") not in ("failed", "cancelled"), f"{name}: {state}"
        assert time.monotonic() < deadline, f"{name}: no completion ({cpu_end})"
        await asyncio.sleep(0.01)
    return info, cpu_start, cpu_end, [sampler.spent() for sampler in samplers]


async def multifd_setup(src, dst, multifd):
    """QEMU's multifd recipe on both sides (destination started with -incoming defer), then
    migrate-incoming on an ephemeral port; returns the URI the destination listens on."""
    channels, compression = multifd
    for client in (src, dst):
        if channels:
            await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
            await client.execute("migrate-set-parameters", {"multifd-channels": channels, "multifd-compression": compression})
    await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = int((await dst.execute("query-migrate"))["socket-address"][0]["port"])
    return f"tcp:127.0.0.1:{port}"


async def migrate_once(vmm, cmdline, ready_pages, port, multifd=None, prealloc=None):
    """One migration: source and destination processes, QMP on both, as a QEMU user drives it.
    multifd: None, or (channels, compression) with channels 0 for a plain migration through the same
    -incoming defer path.  Each process's CPU time is sampled when `migrate` is issued and when that
    process first reports the migration completed."""
    with tempfile.TemporaryDirectory() as tmp:
        src_sock, dst_sock = Path(tmp) / "src.qmp", Path(tmp) / "dst.qmp"
        uri = f"tcp:127.0.0.1:{port}"
        procs = []
        try:
            for sock, incoming in ((src_sock, None), (dst_sock, "defer" if multifd else uri)):
                procs.append(subprocess.Popen(migration_command(vmm, "2G", cmdline, sock, incoming, prealloc),
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
            consoles = [Console(p) for p in procs]
            clients = [await connect_qmp(sock) for sock in (src_sock, dst_sock)]
            src, dst = clients
            if multifd:
                uri = await multifd_setup(src, dst, multifd)
            deadline = time.monotonic() + 120
            while consoles[0].pages() < ready_pages or len(consoles[0].beats) < 10:
                assert time.monotonic() < deadline, f"{vmm.name}: guest never got ready ({consoles[0].pages()} pages)"
                await asyncio.sleep(0.05)
            await src.execute("migrate-set-parameters", {"max-bandwidth": 100 << 30, "downtime-limit": 300})
            info, cpu_start, cpu_end, threads = await migrate_and_time(vmm.name, clients, procs, uri, deadline + 60)
            beats_before = len(consoles[1].beats)
            while len(consoles[1].beats) < beats_before + 3:
                assert time.monotonic() < deadline + 90, f"{vmm.name}: the guest does not beat on the destination"
                await asyncio.sleep(0.05)
            # Guest-observed pause: the largest host-time gap between consecutive heartbeats across the move.
            timeline = sorted(consoles[0].beats + consoles[1].beats, key=lambda b: b[1])
            gap = max(b[0] - a[0] for a, b in zip(timeline, timeline[1:]) if b[1] == a[1] + 1)
            await quit_all(clients, procs)
            return {"total": info["total-time"], "downtime": info["downtime"],
                    "mbps": info["ram"]["transferred"] * 8 / info["total-time"] / 1000,
                    "transferred": info["ram"]["transferred"], "gap": gap * 1000,
                    "src_cpu": cpu_end[0] - cpu_start[0], "dst_cpu": cpu_end[1] - cpu_start[1], "dst_cpu_total": cpu_end[1],
                    "src_mig_cpu": migration_cpu(threads[0]), "dst_mig_cpu": migration_cpu(threads[1]),
                    "threads": threads}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def scenario_migrate(ferry_vmm, qemu_vmm, runs, name, workload, ready_pages):
    cmdline = subprocess.run([ferry_vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                             check=True, capture_output=True, text=True).stdout.strip()
    print(f"scenario {name}: 2 GiB, 1 vCPU, workload {workload}, loopback TCP, max-bandwidth 100 GiB/s, "
          f"downtime-limit 300 ms{', -mem-prealloc' if PREALLOC else ''}, median of {runs} runs")
    # Runs alternate between the VMMs, with a pause before each: this host's
    # kernel hands freed memory back to its own host about 2 s after it is freed
    # (free page reporting), and touching such memory again is several times
    # slower than touching memory still backed.  The pause lets every run start
    # from the same cold state, and alternating spreads any drift over both.
    vmms = [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY]
    runs_of = {vmm.name: [] for vmm in vmms}
    for i in range(runs):
        for vmm in vmms:
            time.sleep(SETTLE_SECONDS)
            runs_of[vmm.name].append(asyncio.run(migrate_once(vmm, cmdline, ready_pages,
                                                              47000 + i + (0 if vmm.name == "ferry" else 100))))
    results = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "threads"}
               for name, rs in runs_of.items()}
    if len(results) == 1:       # --only: one VMM, no ratio
        (name, r), = results.items()
        print(f"{name}: total {r['total']:.0f} ms, downtime {r['downtime']:.0f} ms, pause {r['gap']:.0f} ms, "
              f"{r['mbps'] / 8:.0f} MB/s, {r['transferred'] / 2**20:.0f} MiB sent, "
              f"mig CPU-s src {r['src_mig_cpu']:.2f} dst {r['dst_mig_cpu']:.2f}")
        return
    f, q = results["ferry"], results["qemu"]
    print(f"{'':>26} {'Ferry':>10} {'QEMU 10':>10} {'ratio':>8}")
    print(f"{'total time (ms)':>26} {f['total']:10.0f} {q['total']:10.0f} {q['total'] / f['total']:7.2f}x  (QEMU/Ferry)")
    print(f"{'downtime, reported (ms)':>26} {f['downtime']:10.0f} {q['downtime']:10.0f} "
          f"{q['downtime'] / max(f['downtime'], 1):7.2f}x  (QEMU/Ferry)")
    print(f"{'guest-observed pause (ms)':>26} {f['gap']:10.0f} {q['gap']:10.0f}   (largest heartbeat gap; 100 ms is normal)")
    print(f"{'throughput (MB/s)':>26} {f['mbps'] / 8:10.0f} {q['mbps'] / 8:10.0f} {f['mbps'] / q['mbps']:7.2f}x  (Ferry/QEMU)")
    print(f"{'bytes sent (MiB)':>26} {f['transferred'] / 2**20:10.0f} {q['transferred'] / 2**20:10.0f}")


def first_touch_ms(nbytes, hugepage=False, beside=0):
    """The host's first-touch floor: one thread writes one byte into each 4 KiB page of
    `nbytes` fresh private anonymous memory (the kernel faults and clears each page);
    hugepage: with MADV_HUGEPAGE first, as QEMU advises its guest RAM.  `beside`: bytes
    touched first (untimed) and held meanwhile, as a source holds its RAM while its
    destination fills on the same host.  Memory the host's host has just backed is
    handed out first, so the bytes after it are the colder ones: here 1.5 GiB took
    0.7-3.2 s alone and 8-14 s beside 1.5 GiB held."""
    held = mmap.mmap(-1, beside, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) if beside else None
    area = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        if held is not None:
            held[::4096] = b"\1" * (beside // 4096)
        if hugepage:
            area.madvise(mmap.MADV_HUGEPAGE)
        pages = nbytes // 4096
        start = time.monotonic()
        area[::4096] = b"\1" * pages        # strided assignment: the loop runs in C, one write per page
        return (time.monotonic() - start) * 1000
    finally:
        area.close()
        if held is not None:
            held.close()


def loopback_gbps(streams, seconds=1.0, chunk=4 << 20):
    """Loopback TCP throughput (Gbit/s) over `streams` parallel connections, 4 MiB writes, for `seconds`."""
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = [0] * streams
    stop = time.monotonic() + seconds

    def receive(i, conn):
        buffer = bytearray(chunk)
        with conn:
            while (n := conn.recv_into(buffer)) > 0:
                received[i] += n

    def send():
        data = memoryview(bytes(chunk))
        with socket.create_connection(("127.0.0.1", port)) as conn:
            while time.monotonic() < stop:
                conn.sendall(data)

    senders = [threading.Thread(target=send) for _ in range(streams)]
    for thread in senders:
        thread.start()
    receivers = []
    for i in range(streams):
        conn, _ = listener.accept()
        receivers.append(threading.Thread(target=receive, args=(i, conn)))
        receivers[-1].start()
    start = time.monotonic()
    for thread in senders + receivers:
        thread.join()
    listener.close()
    return sum(received) * 8 / (time.monotonic() - start) / 1e9


def loopback_transfer(nbytes, streams, zerocopy=False, chunk=4 << 20):
    """`nbytes` over `streams` loopback TCP connections, 4 MiB writes of memory already in cache, sender and
    receiver each a process of its own (as the two VMMs are): wall ms and each process's CPU-seconds (wait4).
    What sending these bytes costs the kernel alone, with no page to read or check: the floor under any
    source's CPU here.  With `zerocopy`, MSG_ZEROCOPY (SO_ZEROCOPY, completions reaped from the error queue),
    which loopback turns back into a copy at delivery."""
    import errno
    import threading
    listener = socket.create_server(("127.0.0.1", 0), backlog=streams)
    port = listener.getsockname()[1]
    part = nbytes // streams // chunk * chunk

    def child(body):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                body()
                status = 0
            finally:
                os._exit(status)
        return pid

    def receive():
        def one(conn):
            buffer = bytearray(chunk)
            with conn:
                while conn.recv_into(buffer) > 0:
                    pass
        threads = [threading.Thread(target=one, args=(listener.accept()[0],)) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def send():
        def one():
            buffers = [memoryview(bytearray(b"\1" * chunk)) for _ in range(8 if zerocopy else 1)]
            with socket.create_connection(("127.0.0.1", port)) as conn:
                if zerocopy:
                    conn.setsockopt(socket.SOL_SOCKET, 60, 1)          # SO_ZEROCOPY
                waiter = select.poll()
                waiter.register(conn, 0)                                # POLLERR only: completions queued
                sent = 0
                while sent < part:
                    data = buffers[sent // chunk % len(buffers)][sent % chunk:]
                    try:
                        sent += conn.send(data, 0x4000000 if zerocopy else 0)   # MSG_ZEROCOPY
                    except OSError as error:
                        if error.errno != errno.ENOBUFS:
                            raise
                        waiter.poll(1000)       # the socket's option memory is full: wait for completions (POLLERR)
                    while zerocopy:
                        try:
                            conn.recvmsg(0, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
                        except BlockingIOError:
                            break
        threads = [threading.Thread(target=one) for _ in range(streams)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    receiver = child(receive)
    start = time.monotonic()
    sender = child(send)
    cpu = {}
    for pid in (sender, receiver):
        _, status, usage = os.wait4(pid, 0)
        if status != 0:
            raise RuntimeError(f"loopback transfer: the {'sender' if pid == sender else 'receiver'} failed ({status})")
        cpu[pid] = usage.ru_utime + usage.ru_stime
        wall = (time.monotonic() - start) * 1000      # once the receiver has read everything too
    listener.close()
    return {"ms": wall, "send_cpu": cpu[sender], "recv_cpu": cpu[receiver]}


def scenario_multifd(ferry_vmm, qemu_vmm, runs, name, workload, ready_pages, touch_bytes, channel_counts, compressions,
                     preallocs):
    """Multifd side by side: every (channels, compression) configuration on both VMMs, runs alternating
    between the VMMs and the configurations, each after the settle pause; plus, in the same run, the
    host's first-touch floor for the working set's bytes and loopback TCP throughput."""
    cmdline = subprocess.run([ferry_vmm.ferry, "guest", "cmdline", "--cpus", "1", "--workload", workload],
                             check=True, capture_output=True, text=True).stdout.strip()
    vmms = [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY]
    configs = [(c, z) for c in channel_counts for z in compressions if c or z == "none"]
    max_streams = max([c for c, _ in configs] + [1])
    for prealloc in preallocs:
        flags = ["-mem-prealloc"] if prealloc else []
        print(f"scenario {name}: 2 GiB, 1 vCPU, workload {workload}, loopback TCP, max-bandwidth 100 GiB/s, "
              f"downtime-limit 300 ms, {'-mem-prealloc' if prealloc else 'no -mem-prealloc'} on both sides, "
              f"zero-page-detection and zstd level at their defaults, median of {runs} runs")
        results = {(config, vmm.name): [] for config in configs for vmm in vmms}
        host = {"touch": [], "touch_huge": [], "touch_beside": [], "tcp1": [], "tcpn": []}
        floors = {(streams, zc): [] for streams in sorted({max(c, 1) for c, _ in configs}) for zc in (False, True)}
        for i in range(runs):
            time.sleep(SETTLE_SECONDS)
            host["touch"].append(first_touch_ms(touch_bytes))
            time.sleep(SETTLE_SECONDS)
            host["touch_huge"].append(first_touch_ms(touch_bytes, hugepage=True))
            time.sleep(SETTLE_SECONDS)
            host["touch_beside"].append(first_touch_ms(touch_bytes, beside=touch_bytes))
            host["tcp1"].append(loopback_gbps(1))
            host["tcpn"].append(loopback_gbps(max_streams))
            for streams, zerocopy in floors:
                floors[(streams, zerocopy)].append(loopback_transfer(touch_bytes, streams, zerocopy))
            for config in configs:
                for vmm in vmms:
                    time.sleep(SETTLE_SECONDS)
                    results[(config, vmm.name)].append(asyncio.run(migrate_once(vmm, cmdline, ready_pages, 0, config, flags)))
        h = {key: statistics.median(values) for key, values in host.items()}
        mib = touch_bytes >> 20
        print(f"  host, same run: first touch of {mib} MiB fresh anonymous memory by one thread: {h['touch']:.0f} ms "
              f"({touch_bytes / h['touch'] / 1e6:.2f} GB/s); with MADV_HUGEPAGE {h['touch_huge']:.0f} ms "
              f"({touch_bytes / h['touch_huge'] / 1e6:.2f} GB/s); beside {mib} MiB held, as the source holds its "
              f"RAM here: {h['touch_beside']:.0f} ms ({touch_bytes / h['touch_beside'] / 1e6:.2f} GB/s)")
        print(f"  host, same run: loopback TCP {h['tcp1']:.1f} Gbit/s on 1 stream, {h['tcpn']:.1f} Gbit/s on "
              f"{max_streams} streams (Python, 4 MiB writes)")
        for (streams, zerocopy), samples in floors.items():
            m = {key: statistics.median(r[key] for r in samples) for key in samples[0]}
            print(f"  host, same run: {mib} MiB over {streams} loopback TCP stream(s){' with MSG_ZEROCOPY' if zerocopy else ''}, "
                  f"data in cache, no checksum: {m['ms']:.0f} ms, sender {m['send_cpu']:.2f} CPU-s, "
                  f"receiver {m['recv_cpu']:.2f} CPU-s (the kernel's own cost, a floor under each side's CPU)")
        columns = [("total ms", "total", "{:.0f}"), ("downtime ms", "downtime", "{:.0f}"), ("pause ms", "gap", "{:.0f}"),
                   ("src CPU-s", "src_cpu", "{:.2f}"), ("src mig CPU-s", "src_mig_cpu", "{:.2f}"),
                   ("dst CPU-s", "dst_cpu", "{:.2f}"), ("dst mig CPU-s", "dst_mig_cpu", "{:.2f}"),
                   ("dst CPU-s all", "dst_cpu_total", "{:.2f}"), ("MB/s", "mbps", "{:.0f}"), ("MiB sent", "transferred", "{:.0f}")]
        scale = {"mbps": 1 / 8, "transferred": 1 / 2**20}
        names = [vmm.name for vmm in vmms]
        width = 8 * len(names)
        print(f"  {'':>13} " + " ".join(f"{title:^{width}}" for title, _, _ in columns)
              + ("  total" if len(names) == 2 else ""))
        print(f"  {'channels':>8} {'zstd':>4} " + " ".join(
            "".join(f"{({'ferry': 'Ferry', 'qemu': 'QEMU'})[n]:>8}" for n in names) for _ in columns)
              + ("  QEMU/Ferry" if len(names) == 2 else ""))
        for config in configs:
            medians = {n: {key: statistics.median(r[key] for r in results[(config, n)])
                           for key in results[(config, n)][0] if key != "threads"}
                       for n in names}
            cells = ["".join(f"{form.format(medians[n][key] * scale.get(key, 1)):>8}" for n in names)
                     for _, key, form in columns]
            ratio = f"  {medians['qemu']['total'] / medians['ferry']['total']:9.2f}x" if len(names) == 2 else ""
            channels, compression = config
            print(f"  {channels if channels else 'off':>8} {'yes' if compression == 'zstd' else 'no':>4} " + " ".join(cells) + ratio)
        for config in configs:
            for n in names:
                print(f"  threads, {n}, channels {config[0]}, {config[1]}: " + thread_medians(results[(config, n)]))
            print(f"  each run's total ms, channels {config[0]}, {config[1]}: " + "; ".join(
                f"{n} " + " ".join(f"{r['total']:.0f}" for r in results[(config, n)]) for n in names))
        print("  (total, downtime: query-migrate; pause: largest heartbeat gap, 100 ms is normal; CPU-s: utime+stime "
              "from `migrate` to the process's own completion, src includes its running vCPU; 'mig CPU-s': the same "
              "without the vCPU threads; 'dst CPU-s all': the destination since its start, -mem-prealloc included; "
              "threads: median CPU-s per thread name, src | dst)")


def thread_medians(runs):
    """Per thread name, the median over `runs` of its CPU-seconds (summed over threads of one name), source | destination."""
    sides = []
    for side in (0, 1):
        names = sorted({name for r in runs for name, _ in r["threads"][side]})
        spent = {name: statistics.median(sum(s for n, s in r["threads"][side] if n == name) for r in runs) for name in names}
        sides.append(", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(spent.items(), key=lambda e: -e[1])
                               if seconds >= 0.01))
    return " | ".join(sides)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferry", default=str(ROOT / ".build" / "release" / "ferry"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", choices=["boot", "migrate-idle", "migrate-dirty", "migrate", "all",
                                               "multifd-idle", "multifd-dirty", "multifd", "mapped-ram-save",
                                               "mapped-ram-restore", "mapped-ram", "background-snapshot", "postcopy",
                                               "free-page-hints", "lazy-restore", "mapped-ram-incremental"], default="all",
                        help="`all` is boot and migrate; the multifd and mapped-ram scenarios run only by name")
    parser.add_argument("--channels",
                        help="multifd and mapped-ram scenarios: multifd-channels values, comma-separated; 0 = multifd "
                             "off (default 1,2,4 for multifd, 4 for mapped-ram)")
    parser.add_argument("--compression", default="none,zstd",
                        help="multifd scenarios: multifd-compression values, none and/or zstd (default none,zstd)")
    parser.add_argument("--prealloc", default="off,on",
                        help="multifd scenarios: without (off) and/or with (on) -mem-prealloc on both sides; "
                             "mapped-ram: on the restoring destination, and `freed` there: no prealloc, the guest's size "
                             "touched and freed by another process just before it starts (default off,on)")
    parser.add_argument("--direct-io", default="off,on", help="mapped-ram scenarios: direct-io off and/or on (default off,on)")
    parser.add_argument("--memory", default="1536M", help="mapped-ram scenarios: guest RAM (default 1536M)")
    parser.add_argument("--working-set", default="1280M",
                        help="mapped-ram scenarios: the guest's working set, written before each save (default 1280M)")
    parser.add_argument("--dirty-rate", default="256M",
                        help="mapped-ram scenarios: the guest's dirty rate per second over its working set (default 256M)")
    parser.add_argument("--dir", default="/var/tmp/ferry-bench-mr",
                        help="mapped-ram scenarios: where the files and fio's test file go (default /var/tmp/ferry-bench-mr)")
    parser.add_argument("--raw", help="mapped-ram scenarios: the JSON file for raw samples "
                                      "(default bench/results/mapped-ram-DATE.json)")
    parser.add_argument("--limiter", default="off,seed,latency,seed/mapped-ram",
                        help="background-snapshot: Ferry's x-ferry-snapshot-limiter values; /mapped-ram: into a mapped-ram "
                             "file with 2 multifd writers and direct-io (default off,seed,latency,seed/mapped-ram)")
    parser.add_argument("--snapshot-rates", default="1G,max",
                        help="background-snapshot: the guest's dirty rates, comma-separated (default 1G,max)")
    parser.add_argument("--postcopy-modes", default="postcopy-4K,preempt-4K,postcopy-2M,preempt-2M",
                        help="postcopy: modes, comma-separated: postcopy or preempt, with 4K or 2M pages "
                             "(default postcopy-4K,preempt-4K,postcopy-2M,preempt-2M)")
    parser.add_argument("--ferry-postcopy-pacing", type=int, default=None,
                        help="postcopy: Ferry's x-ferry-postcopy-pacing, percent of precopy's rate (default: Ferry's own)")
    parser.add_argument("--incremental-seconds", default="0.25,1,4",
                        help="mapped-ram-incremental: seconds of dirtying before each incremental save (default 0.25,1,4)")
    parser.add_argument("--hint-workloads", default="idle,churn",
                        help="free-page-hints: the guest's workloads, idle and/or churn (default idle,churn)")
    parser.add_argument("--mem-prealloc", action="store_true",
                        help="run both VMMs with -mem-prealloc (guest RAM allocated at start)")
    parser.add_argument("--only", choices=["ferry", "qemu"],
                        help="migration scenarios on one VMM only (no side-by-side ratio; for profiling)")
    args = parser.parse_args()
    allowed = {"off", "on", "freed"} if args.scenario.startswith("mapped-ram") else {"off", "on"}
    if not set(args.prealloc.split(",")) <= allowed:
        parser.error(f"--prealloc takes {', '.join(sorted(allowed))} for scenario {args.scenario}: {args.prealloc}")
    if args.only:
        ONLY.intersection_update({args.only})
    if args.mem_prealloc:
        PREALLOC.append("-mem-prealloc")
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "guest.elf")
        subprocess.run([args.ferry, "guest", "export", "--output", image], check=True, capture_output=True)
        ferry_vmm, qemu_vmm = VMM("ferry", args.ferry, image), VMM("qemu", args.ferry, image)
        print(subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines()[0])
        if args.scenario in ("boot", "all"):
            scenario_boot(ferry_vmm, qemu_vmm, args.runs)
        if args.scenario in ("migrate-idle", "migrate", "all"):
            scenario_migrate(ferry_vmm, qemu_vmm, args.runs, "migrate-idle", "dirty-rate=0,working-set=1536M", 393216)
        if args.scenario in ("migrate-dirty", "migrate", "all"):
            scenario_migrate(ferry_vmm, qemu_vmm, args.runs, "migrate-dirty", "dirty-rate=max,working-set=256M", 65536)
        onoff = {"off": False, "on": True}
        multifd = ([int(c) for c in (args.channels or "1,2,4").split(",")], args.compression.split(","),
                   [onoff[p] for p in args.prealloc.split(",")] if args.scenario.startswith("multifd") else [])
        if args.scenario in ("multifd-idle", "multifd"):
            scenario_multifd(ferry_vmm, qemu_vmm, args.runs, "multifd-idle", "dirty-rate=0,working-set=1536M", 393216,
                             1536 << 20, *multifd)
        if args.scenario in ("multifd-dirty", "multifd"):
            scenario_multifd(ferry_vmm, qemu_vmm, args.runs, "multifd-dirty", "dirty-rate=max,working-set=256M", 65536,
                             256 << 20, *multifd)
        if args.scenario == "background-snapshot":
            sys.modules.setdefault("side_by_side", sys.modules[__name__])
            from snapshot import scenario_snapshot
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"snapshot-{time.strftime('%Y%m%d-%H%M%S')}.json"
            memory = args.memory if args.memory != "1536M" else "2G"
            working_set = args.working_set if args.working_set != "1280M" else "1536M"
            scenario_snapshot(ferry_vmm, qemu_vmm, [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY], args.runs,
                              memory, working_set, args.snapshot_rates.split(","), args.limiter.split(","), args.dir, raw)
        if args.scenario == "postcopy":
            sys.modules.setdefault("side_by_side", sys.modules[__name__])
            from postcopy import scenario_postcopy
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"postcopy-{time.strftime('%Y%m%d-%H%M%S')}.json"
            memory = args.memory if args.memory != "1536M" else "2G"
            working_set = args.working_set if args.working_set != "1280M" else "1536M"
            scenario_postcopy(ferry_vmm, qemu_vmm, [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY], args.runs,
                              memory, working_set, args.postcopy_modes.split(","), raw, args.ferry_postcopy_pacing)
        if args.scenario == "lazy-restore":
            sys.modules.setdefault("side_by_side", sys.modules[__name__])
            from lazy_restore import scenario_lazy_restore
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"lazy-restore-{time.strftime('%Y%m%d-%H%M%S')}.json"
            scenario_lazy_restore(ferry_vmm, qemu_vmm, [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY], args.runs,
                                  args.dir, raw)
        if args.scenario == "free-page-hints":
            sys.modules.setdefault("side_by_side", sys.modules[__name__])
            from free_page_hints import scenario_free_page_hints
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"free-page-hints-{time.strftime('%Y%m%d-%H%M%S')}.json"
            scenario_free_page_hints(ferry_vmm, qemu_vmm, [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY], args.runs,
                                     args.hint_workloads.split(","), raw)
        if args.scenario == "mapped-ram-incremental":
            sys.modules.setdefault("side_by_side", sys.modules[__name__])
            from incremental import scenario_incremental
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"incremental-{time.strftime('%Y%m%d-%H%M%S')}.json"
            # One configuration: --channels one value (default 4), --direct-io one value (default on).
            channels, direct_io = (args.channels or "4").split(","), (args.direct_io if args.direct_io != "off,on" else "on").split(",")
            if len(channels) != 1 or len(direct_io) != 1 or args.only == "qemu":
                raise SystemExit("mapped-ram-incremental runs Ferry with one --channels and one --direct-io value")
            scenario_incremental(ferry_vmm, args.runs, args.memory, args.working_set, args.dirty_rate,
                                 int(channels[0]), onoff[direct_io[0]],
                                 [float(s) for s in args.incremental_seconds.split(",")], args.dir, raw)
        elif args.scenario.startswith("mapped-ram"):
            sys.modules.setdefault("side_by_side", sys.modules[__name__])     # mapped_ram imports the helpers above
            from mapped_ram import scenario_mapped_ram
            parts = {"mapped-ram-save": {"stopped", "live"}, "mapped-ram-restore": {"live", "restore"},
                     "mapped-ram": {"stopped", "live", "restore"}}[args.scenario]
            raw = Path(args.raw) if args.raw else ROOT / "bench" / "results" / f"mapped-ram-{time.strftime('%Y%m%d-%H%M%S')}.json"
            scenario_mapped_ram(ferry_vmm, qemu_vmm, [v for v in (ferry_vmm, qemu_vmm) if v.name in ONLY], args.runs,
                                parts, args.memory, args.working_set, args.dirty_rate,
                                [int(c) for c in (args.channels or "4").split(",")],
                                [onoff[d] for d in args.direct_io.split(",")],
                                [{**onoff, "freed": "freed"}[p] for p in args.prealloc.split(",")],
                                args.dir, raw)


if __name__ == "__main__":
    main()
