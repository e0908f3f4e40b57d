"""Live migration between two ferry processes, driven with qemu.qmp exactly as one drives QEMU."""
import asyncio
import os
import re
import signal
import subprocess
import time

import pytest
from qemu.qmp import QMPClient, ExecuteError
from qemu.qmp.protocol import ConnectError

from conftest import assert_beats_continue, assert_verified_clean, last_heartbeat_errors


def beats(serial):
    """(sequence, guest milliseconds) of every heartbeat line of vCPU 0's log."""
    return [(int(s), int(t)) for s, t in re.findall(r"^HB (\d+) t=(\d+) ", serial.read_text(), re.M)]


class VM:
    """One ferry process with a QMP socket and a serial log."""

    def __init__(self, ferry, tmp_path, name, args):
        self.launch(tmp_path, name, lambda sock, serial: (
            [ferry, "run", "--serial", f"file:{serial}", "--qmp", f"unix:{sock}", "--verify-on-exit", *args], subprocess.DEVNULL))

    def launch(self, tmp_path, name, command):
        """Starts `command(sock, serial)` -> (argv, stdout) and waits for its QMP socket."""
        self.sock = tmp_path / f"{name}.qmp"
        self.serial = tmp_path / f"{name}.log"
        self.stderr = tmp_path / f"{name}.err"
        argv, stdout = command(self.sock, self.serial)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=open(self.stderr, "w"))
        deadline = time.monotonic() + 15
        while not self.sock.exists():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, "QMP socket never appeared"
            time.sleep(0.02)
        self.qmp = QMPClient(name)

    async def connect(self):
        """Connects, retried while refused: the socket file exists from the bind, and QEMU may
        still be allocating RAM (-mem-prealloc) or opening its migration before the listen."""
        name = self.qmp.name
        for attempt in range(600):
            try:
                await self.qmp.connect(str(self.sock))
                return self
            except ConnectError:
                if attempt == 599 or self.proc.poll() is not None:
                    raise
                self.qmp = QMPClient(name)
                await asyncio.sleep(0.05)

    async def quit(self):
        await self.qmp.execute("quit")
        try:
            await self.qmp.disconnect()
        except EOFError:
            pass    # Ferry (like QEMU) closes the socket after its reply; the client may see that first
        assert self.proc.wait(timeout=20) == 0, self.stderr.read_text()
        return self.stderr.read_text()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def vms(ferry, tmp_path):
    made = []

    def make(name, *args):
        vm = VM(ferry, tmp_path, name, args)
        made.append(vm)
        return vm
    yield make
    for vm in made:
        vm.kill()


async def migration_statuses(client, until=("completed", "failed", "cancelled"), timeout=60):
    """MIGRATION event statuses up to the first final one."""
    seen = []

    async def collect():
        async for event in client.events:
            if event["event"] == "MIGRATION":
                seen.append(event["data"]["status"])
                if seen[-1] in until:
                    return seen
    return await asyncio.wait_for(collect(), timeout)


async def wait_status(client, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        info = await client.execute("query-migrate")
        if info.get("status") in wanted:
            return info
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.05)


MACHINE = ["--cpus", "2", "--memory", "512M"]


def test_qemu_qmp_drives_both_sides_over_tcp(vms):
    """The QEMU recipe: -incoming defer, migrate-incoming, migrate, MIGRATION events, query-migrate."""
    source = vms("src", *MACHINE, "--workload", "dirty-rate=32M,working-set=128M")
    destination = vms("dst", *MACHINE, "--incoming", "defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"
        caps = {c["capability"]: c["state"] for c in await src.qmp.execute("query-migrate-capabilities")}
        assert caps["auto-converge"] is False and caps["events"] is True and caps["postcopy-ram"] is False
        assert caps["return-path"] is True
        await src.qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True},
                                                                            {"capability": "return-path", "state": True}]})
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30, "downtime-limit": 300})
        params = await src.qmp.execute("query-migrate-parameters")
        assert params["max-bandwidth"] == 4 << 30 and params["downtime-limit"] == 300
        assert params["cpu-throttle-initial"] == 20 and params["cpu-throttle-increment"] == 10

        await dst.qmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        listening = await dst.qmp.execute("query-migrate")
        port = int(listening["socket-address"][0]["port"])
        assert port > 0

        await asyncio.sleep(1.0)
        src_events = asyncio.ensure_future(migration_statuses(src.qmp))
        dst_events = asyncio.ensure_future(migration_statuses(dst.qmp))
        await src.qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        active = await wait_status(src.qmp, ("active", "device", "completed"))
        assert active["status"] in ("active", "device", "completed")
        assert await src_events == ["setup", "active", "device", "completed"]
        assert await dst_events == ["setup", "active", "completed"]

        info = await src.qmp.execute("query-migrate")
        ram = info["ram"]
        assert info["status"] == "completed" and info["downtime"] >= 0 and info["total-time"] >= info["downtime"]
        assert "setup-time" in info
        assert ram["total"] == 512 << 20 and ram["remaining"] == 0
        assert ram["normal"] > 0 and ram["normal-bytes"] == ram["normal"] * 4096 and ram["duplicate"] > 0
        assert ram["transferred"] >= ram["normal-bytes"] and ram["dirty-sync-count"] >= 2 and ram["mbps"] > 0
        for field in ("dirty-pages-rate", "pages-per-second"):
            assert field in ram
        assert (await src.qmp.execute("query-status"))["status"] == "postmigrate"
        assert (await dst.qmp.execute("query-status"))["status"] == "running"
        assert (await dst.qmp.execute("query-migrate"))["status"] == "completed"

        await asyncio.sleep(1.0)
        assert len(assert_beats_continue(source.serial, destination.serial)[1]) >= 5
        assert last_heartbeat_errors(destination.serial.read_text()) == 0
        await src.quit()
        assert_verified_clean(await dst.quit())

    asyncio.run(scenario())


def test_exported_pvh_guest_migrates_while_dirtying(ferry, vms, tmp_path):
    """The guest as an outside PVH kernel (--kernel): it keeps beating, its clock jumps no more than the pause."""
    kernel = tmp_path / "guest.elf"
    subprocess.run([ferry, "guest", "export", "--output", str(kernel)], check=True)
    cmdline = subprocess.run([ferry, "guest", "cmdline", "--cpus", "1", "--workload", "dirty-rate=64M,working-set=128M"],
                             check=True, capture_output=True, text=True).stdout.strip()
    uri = f"unix:{tmp_path}/migration.sock"
    source = vms("src", "--memory", "512M", "--kernel", str(kernel), "--append", cmdline)
    destination = vms("dst", "--memory", "512M", "--kernel", str(kernel), "--append", cmdline, "--incoming", uri)

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await asyncio.sleep(1.0)
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.qmp.execute("migrate", {"uri": uri})
        info = await wait_status(src.qmp, ("completed", "failed"))
        assert info["status"] == "completed", info
        await asyncio.sleep(1.0)
        before, after = assert_beats_continue(source.serial, destination.serial)
        assert [s for s, _ in after] == list(range(after[0][0], after[0][0] + len(after)))
        clock_jump = after[0][1] - before[-1][1] - 100          # beyond the usual 100 ms between beats
        assert clock_jump <= info["downtime"] + 50, (clock_jump, info["downtime"])
        assert last_heartbeat_errors(destination.serial.read_text()) == 0
        await src.quit()
        assert_verified_clean(await dst.quit())

    asyncio.run(scenario())


def test_killed_destination_leaves_source_running_then_retry_succeeds(vms, tmp_path):
    source = vms("src", *MACHINE, "--workload", "dirty-rate=16M,working-set=128M")
    first = vms("dst1", *MACHINE, "--incoming", f"unix:{tmp_path}/m1.sock")

    async def scenario():
        src = await source.connect()
        await asyncio.sleep(1.5)
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 32 << 20})
        await src.qmp.execute("migrate", {"uri": f"unix:{tmp_path}/m1.sock"})
        await wait_status(src.qmp, ("active",))
        await asyncio.sleep(0.5)
        first.proc.send_signal(signal.SIGKILL)
        info = await wait_status(src.qmp, ("failed",))
        assert info["error-desc"]
        assert (await src.qmp.execute("query-status"))["status"] == "running"
        count = len(beats(source.serial))
        await asyncio.sleep(0.6)
        assert len(beats(source.serial)) > count + 3, "the source guest runs on"

        second = await vms("dst2", *MACHINE, "--incoming", f"unix:{tmp_path}/m2.sock").connect()
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.qmp.execute("migrate", {"uri": f"unix:{tmp_path}/m2.sock"})
        assert (await wait_status(src.qmp, ("completed", "failed")))["status"] == "completed"
        await asyncio.sleep(0.5)
        await src.quit()
        assert_verified_clean(await second.quit())

    asyncio.run(scenario())


def test_migration_commands_refuse_bad_arguments(vms):
    vm = vms("vm", "--memory", "64M")

    async def scenario():
        client = (await vm.connect()).qmp
        cases = [
            ("migrate", {"uri": "bogus:1"}, "unknown migration protocol: bogus:1"),
            ("migrate", {"uri": "tcp:127.0.0.1:99999"}, "invalid port '99999'"),
            ("migrate", {}, "Parameter 'uri' is missing"),
            ("migrate-set-parameters", {"downtime-limit": -1}, "downtime_limit"),
            ("migrate-set-parameters", {"cpu-throttle-initial": 100}, "range of 1 to 99"),
            ("migrate-set-parameters", {"x-inactivity-limit": -1}, "Parameter 'x-inactivity-limit' expects an integer"),
            ("migrate-set-parameters", {"no-such": 1}, "Parameter 'no-such' is unexpected"),
            ("migrate-set-capabilities", {"capabilities": [{"capability": "xbzrle", "state": True}]},
             "Capability 'xbzrle' is not supported"),
            ("migrate-set-capabilities", {"capabilities": [{"capability": "warp-drive", "state": True}]},
             "does not accept value 'warp-drive'"),
            ("migrate-incoming", {"uri": "tcp:127.0.0.1:0"}, "start with --incoming"),
            ("migrate", {"uri": "unix:/tmp/x.sock", "detach": "yes"}, "Invalid parameter type for 'detach', expected: boolean"),
            ("migrate", {"uri": "unix:/tmp/x.sock", "resume": True}, "Cannot resume if there is no paused migration"),
            ("migrate", {"uri": "unix:/tmp/x.sock", "resume": 1}, "Invalid parameter type for 'resume', expected: boolean"),
            ("migrate-recover", {"uri": "unix:/tmp/x.sock"}, "Migrate recover can only be run when postcopy is paused."),
            ("migrate-recover", {}, "Parameter 'uri' is missing"),
            ("migrate-pause", {}, "migrate-pause is currently only supported during postcopy-active or postcopy-recover state"),
            ("migrate", {"channels": []}, "Parameter 'channels' is not supported"),
            ("migrate-incoming", {"uri": "tcp:127.0.0.1:0", "exit-on-error": 3}, "'exit-on-error', expected: boolean"),
            ("migrate-set-parameters", {"max-bandwidth": "fast"}, "Parameter 'max-bandwidth' expects uint64"),
            ("migrate-set-capabilities", {"capabilities": "all"}, "'capabilities', expected: array"),
            ("migrate-set-capabilities", {"capabilities": [{"capability": "events"}]}, "Parameter 'state' is missing"),
            ("migrate-set-capabilities", {"capabilities": [{"capability": "return-path", "state": False}]},
             "cannot be turned off"),
        ]
        for command, arguments, message in cases:
            with pytest.raises(ExecuteError) as caught:
                await client.execute(command, arguments)
            assert caught.value.error_class == "GenericError" and message in str(caught.value), (command, str(caught.value))
        assert await client.execute("query-migrate") == {}
        assert (await client.execute("query-status"))["status"] == "running"
        # The connect happens off the QMP queue, as in QEMU: its failure is the migration's.
        assert await client.execute("migrate", {"uri": "unix:/nonexistent/dir/sock"}) == {}
        info = await wait_status(client, ("failed",), timeout=10)
        assert "Failed to connect to 'unix:/nonexistent/dir/sock'" in info["error-desc"], info
        assert (await client.execute("query-status"))["status"] == "running"
        await vm.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("uri, message", [
    ("bogus:x", "unknown migration protocol"),
    ("tcp:localhost:port", "invalid port"),
    ("unix:", "needs a socket path"),
    ("fd:minus", "descriptor number"),
])
def test_bad_incoming_uri_is_one_error_line(ferry, uri, message):
    result = subprocess.run([ferry, "run", "--memory", "64M", "--incoming", uri], capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_auto_converge_throttles_a_guest_that_outruns_the_link(vms, tmp_path):
    """A guest dirtying about as fast as a 32 MiB/s link: with auto-converge the vCPUs get throttled and it converges."""
    uri = f"unix:{tmp_path}/m.sock"
    source = vms("src", "--memory", "256M", "--workload", "dirty-rate=48M,working-set=32M")
    destination = vms("dst", "--memory", "256M", "--incoming", uri)

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await asyncio.sleep(1.0)
        await src.qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge", "state": True}]})
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 32 << 20, "downtime-limit": 50,
                                                         "cpu-throttle-initial": 30, "cpu-throttle-increment": 20})
        await src.qmp.execute("migrate", {"uri": uri})
        throttles = []
        while True:
            info = await src.qmp.execute("query-migrate")
            if "cpu-throttle-percentage" in info:
                throttles.append(info["cpu-throttle-percentage"])
            if info["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        assert info["status"] == "completed", info
        assert throttles and throttles[0] == 30 and max(throttles) >= 50, throttles
        await asyncio.sleep(0.5)
        await src.quit()
        assert_verified_clean(await dst.quit())

    asyncio.run(scenario())


def test_file_save_restores_through_an_inherited_descriptor(ferry, vms, tmp_path):
    """migrate to file:, then restore with --incoming fd:N (a descriptor the parent opened), as QEMU users do."""
    state = tmp_path / "vm.state"
    source = vms("src", "--memory", "128M", "--workload", "dirty-rate=8M,working-set=16M")

    async def save():
        src = await source.connect()
        await asyncio.sleep(1.0)
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.qmp.execute("migrate", {"uri": f"file:{state}"})
        assert (await wait_status(src.qmp, ("completed", "failed")))["status"] == "completed"
        assert (await src.qmp.execute("query-status"))["status"] == "postmigrate"
        await src.quit()

    asyncio.run(save())
    assert state.read_bytes()[:8] == b"FERRYMIG"
    fd = os.open(state, os.O_RDONLY)
    serial = tmp_path / "restored.log"
    result = subprocess.run([ferry, "run", "--memory", "128M", "--incoming", f"fd:{fd}", "--serial", f"file:{serial}",
                             "--run-for", "1.5", "--verify-on-exit"], pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    os.close(fd)
    assert result.returncode == 0, result.stderr
    assert_verified_clean(result.stderr)
    assert_beats_continue(source.serial, serial)


def test_truncated_file_fails_the_restore_with_a_clear_error(ferry, tmp_path):
    state = tmp_path / "short.state"
    # A whole version 3 header (main channel), then nothing.
    state.write_bytes(b"FERRYMIG" + bytes([3, 0, 0, 0, 0, 0, 0, 0]) + bytes([1, 0, 0, 0, 0, 0, 0, 0]) + bytes(16))
    result = subprocess.run([ferry, "run", "--memory", "64M", "--incoming", f"file:{state}", "--serial", "none"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("ferry: error: load of migration failed: stream truncated: "
                                    "the stream ended after 40 bytes, 0 of the 24 bytes of a frame header"), result.stderr

    # A header cut short says how much of it came.
    state.write_bytes(b"FERRYMIG" + bytes([3, 0, 0, 0, 0, 0, 0, 0]))
    short = subprocess.run([ferry, "run", "--memory", "64M", "--incoming", f"file:{state}", "--serial", "none"],
                           capture_output=True, text=True, timeout=30)
    assert short.returncode == 1
    assert "the stream ended after 16 bytes, 16 of the 40 bytes of the stream header" in short.stderr, short.stderr

    # Version 1 and 2 files (no sequence numbers; no channel identity or page tails) are refused by name.
    for version in (1, 2):
        state.write_bytes(b"FERRYMIG" + bytes([version, 0, 0, 0, 0, 0, 0, 0]))
        old = subprocess.run([ferry, "run", "--memory", "64M", "--incoming", f"file:{state}", "--serial", "none"],
                             capture_output=True, text=True, timeout=30)
        assert old.returncode == 1
        assert f"stream version {version} is not supported (this Ferry reads 3...3)" in old.stderr, old.stderr


def test_paused_start_waits_for_cont(vms):
    """-S: the guest does not run (QEMU's prelaunch) until cont."""
    vm = vms("vm", "--memory", "64M", "-S", "--workload", "dirty-rate=1M,working-set=1M")

    async def scenario():
        client = (await vm.connect()).qmp
        await asyncio.sleep(0.5)
        assert (await client.execute("query-status"))["status"] == "prelaunch"
        assert beats(vm.serial) == []
        await client.execute("cont")
        await asyncio.sleep(0.5)
        assert (await client.execute("query-status"))["status"] == "running"
        assert len(beats(vm.serial)) >= 3
        assert_verified_clean(await vm.quit())

    asyncio.run(scenario())


def test_silent_source_fails_the_destination_after_x_inactivity_limit(vms, tmp_path):
    """Ferry's own parameter, set on a `defer` destination before `migrate-incoming`, as any other."""
    import socket
    dst = vms("dst", "--cpus", "1", "--memory", "64M", "--incoming", "defer")

    async def scenario():
        client = (await dst.connect()).qmp
        assert (await client.execute("query-migrate-parameters"))["x-inactivity-limit"] == 60000
        await client.execute("migrate-set-parameters", {"x-inactivity-limit": 500})
        assert (await client.execute("query-migrate-parameters"))["x-inactivity-limit"] == 500
        await client.execute("migrate-incoming", {"uri": f"unix:{tmp_path}/silent.sock"})
        source = socket.socket(socket.AF_UNIX)
        source.connect(str(tmp_path / "silent.sock"))
        source.sendall(b"FERRYMIG" + bytes([3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]) + bytes(16))    # a stream header, then nothing
        started = time.monotonic()
        code = await asyncio.get_running_loop().run_in_executor(None, lambda: dst.proc.wait(timeout=10))
        waited = time.monotonic() - started
        source.close()
        try:
            await client.disconnect()       # the process is gone: its socket closed under the client
        except Exception:
            pass
        return code, waited

    code, waited = asyncio.run(scenario())
    assert code == 1 and 0.4 < waited < 5, (code, waited)
    assert "load of migration failed: nothing arrived from the other side for 0.5 seconds" in dst.stderr.read_text()
