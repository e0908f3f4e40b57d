"""The ferry CLI: bad input gets one clear error line and exit status 2."""
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import assert_verified_clean


def run(ferry, *args, timeout=30):
    return subprocess.run([ferry, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def free_huge_pages():
    try:
        with open("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") as f:
            return int(f.read())
    except OSError:
        return 0


@pytest.mark.parametrize("args, message", [
    (["--memory-backend", "tmpfs"], "unknown memory backend 'tmpfs'"),
    (["--memory", "lots"], "invalid memory size 'lots'"),
    (["--memory", "1X"], "invalid memory size '1X'"),
    (["--memory", "4T"], "exceeds the limit"),
    (["--memory", "99999999999999999999G"], "invalid memory size"),
    (["--memory", "1M"], "below the minimum"),
    (["--cpus", "0"], "--cpus must be between 1 and 32, not 0"),
    (["--cpus", "33"], "--cpus must be between 1 and 32, not 33"),
    (["--workload", "dirty-rate=fast"], "invalid --workload"),
    (["--serial", "tcp:1234"], "invalid --serial"),
    (["--qmp", "tcp:localhost:4444"], "invalid --qmp"),
    (["--kernel", "/nonexistent/vmlinux"], "cannot read kernel file"),
    (["--kernel", "/etc/hostname"], "not an ELF file"),
    (["--append", "console=ttyS0"], "--append and --initrd need --kernel"),
    (["--run-for", "0"], "--run-for must be a positive number"),
    (["--run-for=-1"], "--run-for must be a positive number"),
    (["--device", "virtio-net"], "invalid --device: unknown device 'virtio-net'"),
    (["--device", "virtio-balloon,free-page-hint=maybe"], "free-page-hint takes on or off, not 'maybe'"),
    (["--device", "virtio-balloon,deflate-on-oom=on"], "unknown property 'deflate-on-oom'"),
    (["--device", "virtio-balloon,"], "unknown property ''"),
    (["--device", "virtio-balloon,="], "unknown property '='"),
    (["--device", "virtio-balloon", "-device", "virtio-balloon"], "at most one --device"),
    (["--workload", "dirty-rate=0,free=3M"], "invalid value '3M' for workload key 'free'"),
    (["--workload", "dirty-rate=0,working-set=64M,free=64M"], "invalid value '64M' for workload key 'free'"),
    (["--workload", "dirty-rate=0,churn=lots"], "invalid value 'lots' for workload key 'churn'"),
])
def test_bad_input_is_one_error_line_and_status_2(ferry, args, message):
    result = run(ferry, "run", "--serial", "none", *args) if "--serial" not in args else run(ferry, "run", *args)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Fatal error" not in result.stderr


def test_missing_hugepages_is_a_clear_error(ferry):
    pages = max(free_huge_pages() + 1, 64)
    result = run(ferry, "run", "--serial", "none", "--memory-backend", "hugetlb", "--memory", f"{pages * 2}M")
    assert result.returncode == 2, result
    assert "huge pages" in result.stderr and "nr_hugepages" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_complete(ferry):
    result = run(ferry, "run", "--help")
    assert result.returncode == 0
    for flag in ["--memory", "--memory-backend", "--cpus", "--workload", "--kernel", "--append", "--initrd",
                 "--serial", "--qmp", "--progress", "--run-for", "--verify-on-exit", "--incoming",
                 "--paused", "--mem-prealloc"]:
        assert flag in result.stdout, flag
    top = run(ferry, "--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ["run", "demo", "guest"])


@pytest.mark.parametrize("backend", ["anon", "memfd"])
def test_run_verifies_clean_and_exits_0(ferry, backend):
    result = run(ferry, "run", "--memory-backend", backend, "--memory", "128M", "--cpus", "2",
                 "--workload", "dirty-rate=16M,working-set=16M", "--run-for", "1", "--verify-on-exit", "--progress")
    assert result.returncode == 0, result.stderr
    assert "HB 1 t=0 pages=0 err=0" in result.stdout
    assert_verified_clean(result.stderr)
    assert "heartbeats/s=" in result.stderr


def test_threads_carry_qemus_names(ferry):
    """top -H, ps -L and perf see Ferry's threads by name; vCPUs are named as QEMU names them."""
    proc = subprocess.Popen([ferry, "run", "--memory", "64M", "--cpus", "2", "--serial", "none", "--run-for", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        names = set()
        for _ in range(200):
            try:
                names = {(task / "comm").read_text().strip() for task in Path(f"/proc/{proc.pid}/task").iterdir()}
            except FileNotFoundError:
                pass    # a thread ended between the listing and the read
            if {"CPU 0/KVM", "CPU 1/KVM"} <= names:
                break
            time.sleep(0.01)
        assert {"CPU 0/KVM", "CPU 1/KVM"} <= names, names
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()


def test_exported_guest_boots_with_kernel_flag(ferry, tmp_path):
    image = tmp_path / "guest.elf"
    assert run(ferry, "guest", "export", "--output", str(image)).returncode == 0
    assert image.read_bytes()[:4] == b"\x7fELF"
    result = run(ferry, "run", "--kernel", str(image), "--append", "cpus=1 dirty-rate=8M working-set=8M",
                 "--memory", "64M", "--run-for", "1", "--verify-on-exit")
    assert result.returncode == 0, result.stderr
    assert "HB 3 " in result.stdout


def test_demo_runs(ferry):
    result = run(ferry, "demo", "--seconds", "1.5", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"^  migration active .* MiB sent", out, re.M), out
    assert re.search(r"^migration completed in \d+ ms, downtime \d+ ms", out, re.M), out
    assert re.search(r"dst\| ferry: verify: \d+ pages checked, [1-9]\d* written by the guest, 0 failed.*verify failures: 0", out), out
    # The guest's heartbeats continue on the destination where they stopped on the source.
    src = [int(n) for n in re.findall(r"^  src\| HB (\d+) ", out, re.M)]
    dst = [int(n) for n in re.findall(r"^  dst\| HB (\d+) ", out, re.M)]
    assert src and dst and dst[0] > src[-1] - 2 and "the guest moved between two processes" in out


def test_hugetlb_backend_runs_and_verifies(ferry):
    """Reserves 2 MiB huge pages for the run (root only) and restores the setting."""
    path = "/proc/sys/vm/nr_hugepages"
    try:
        with open(path) as f:
            before = int(f.read())
        needed = 64
        if free_huge_pages() < needed:
            with open(path, "w") as f:
                f.write(str(before + needed))
    except OSError as error:
        pytest.skip(f"cannot reserve huge pages: {error}")
    try:
        if free_huge_pages() < 64:
            pytest.skip("the kernel could not reserve 64 huge pages")
        result = run(ferry, "run", "--memory-backend", "hugetlb", "--memory", "128M", "--cpus", "2",
                     "--workload", "dirty-rate=16M,working-set=16M", "--run-for", "1", "--verify-on-exit", "--serial", "none")
        assert result.returncode == 0, result.stderr
        assert_verified_clean(result.stderr)
    finally:
        with open(path, "w") as f:
            f.write(str(before))


def test_guest_cmdline_prints_what_ferry_passes(ferry):
    result = run(ferry, "guest", "cmdline", "--cpus", "2", "--workload", "dirty-rate=64M,working-set=1G")
    assert result.returncode == 0, result.stderr
    fields = dict(item.split("=", 1) for item in result.stdout.split())
    assert fields["cpus"] == "2" and fields["dirty-rate"] == str(64 << 20) and fields["working-set"] == str(1 << 30)
    assert int(fields["tsc-khz"]) > 100000
    bad = run(ferry, "guest", "cmdline", "--cpus", "0")
    assert bad.returncode == 2 and "--cpus must be between 1 and 32" in bad.stderr


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "soon"])
def test_demo_rejects_bad_durations(ferry, seconds):
    result = run(ferry, "demo", f"--seconds={seconds}")
    assert result.returncode == 2, result
    assert len(result.stderr.strip().splitlines()) == 1 and "error" in result.stderr


@pytest.mark.parametrize("rate", ["fast", "0", "-5M"])
def test_demo_rejects_bad_bandwidth(ferry, rate):
    result = run(ferry, "demo", f"--max-bandwidth={rate}")
    assert result.returncode == 2 and "invalid --max-bandwidth" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_qemus_spellings_of_the_machine_options(ferry, tmp_path):
    """A QEMU command line's -m, -qmp (with ,server=on,wait=off), -serial and -S run Ferry as they are (-incoming: test_free_page_hints)."""
    from qemu.qmp import QMPClient
    import asyncio
    sock, serial = tmp_path / "qmp.sock", tmp_path / "serial.log"
    proc = subprocess.Popen([ferry, "run", "-m", "64M", "-qmp", f"unix:{sock},server=on,wait=off",
                             "-serial", f"file:{serial}", "-S"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async def scenario():
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                await asyncio.sleep(0.05)
            client = QMPClient()
            await client.connect(str(sock))
            assert (await client.execute("query-status"))["status"] == "prelaunch"
            await client.execute("cont")
            while "HB 3 " not in serial.read_text():
                assert time.monotonic() < deadline, serial.read_text()
                await asyncio.sleep(0.05)
            try:
                await client.execute("quit")
                await client.disconnect()
            except EOFError:
                pass
        asyncio.run(scenario())
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
