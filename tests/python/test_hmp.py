"""HMP through QMP (`human-monitor-command`) and `query-qmp-schema`, driven with qemu.qmp as one drives QEMU."""
import asyncio
import re
import time

import pytest
from qemu.qmp import QMPClient, ExecuteError

from conftest import assert_verified_clean
from test_migration import beats, vms  # noqa: F401  (vms is a fixture)
from test_qmp_client import wait_for_event


async def hmp(vm, line, **extra):
    return await vm.qmp.execute("human-monitor-command", {"command-line": line, **extra})


async def hmp_until(vm, line, pattern, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        text = await hmp(vm, line)
        if re.search(pattern, text, re.M):
            return text
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.05)


def test_hmp_drives_a_migration_then_cont_resumes_the_source(vms, tmp_path):
    source = vms("src", "--cpus", "2", "--memory", "256M", "--workload", "dirty-rate=16M,working-set=64M")
    destination = vms("dst", "--cpus", "2", "--memory", "256M", "--incoming", "defer")
    uri = f"unix:{tmp_path}/migration.sock"

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        assert await hmp(src, "info status") == "VM status: running\n"
        assert await hmp(dst, "info status") == "VM status: paused (inmigrate)\n"
        assert await hmp(src, "info migrate") == ""
        cpus = await hmp(src, "info cpus", **{"cpu-index": 1})
        assert re.fullmatch(r"  CPU #0: thread_id=\d+\n\* CPU #1: thread_id=\d+\n", cpus), cpus
        with pytest.raises(ExecuteError, match="Invalid CPU index"):
            await hmp(src, "info cpus", **{"cpu-index": 2})

        # Garbage and partial lines: one-line errors, nothing applied.
        before = await src.qmp.execute("query-migrate-parameters")
        for line, text in [("foo", "unknown command: 'foo'\n"),
                           ("ç☃ ]]", "unknown command: 'ç☃'\n"),
                           ("", ""),
                           ("info", "info: missing argument 'item'\n"),
                           ("info nothing", "unknown command: 'info nothing'\n"),
                           ("migrate", "migrate: missing argument 'uri'\n"),
                           ("migrate -d", "migrate: missing argument 'uri'\n"),
                           ("migrate -d bogus:x", None),
                           ('migrate "unix:/tmp/x', "unterminated string literal\n"),
                           ("migrate_set_parameter max-bandwidth", "migrate_set_parameter: missing argument 'value'\n"),
                           ("migrate_set_parameter max-bandwidth 1Q", "Error: Invalid size 1Q\n"),
                           ("migrate_set_parameter cpu-throttle-initial 150", None),
                           ("migrate_set_parameter no-such-thing 5", "Error: Parameter 'no-such-thing' is unexpected\n"),
                           ("migrate_set_parameter no-such-thing x", "Error: Parameter 'no-such-thing' is unexpected\n"),
                           ("migrate_set_parameter downtime-limit soon",
                            "Error: Parameter 'downtime-limit' expects uint64\n"),
                           ("migrate_set_parameter downtime-limit 9999999", None),
                           ("migrate_set_capability events perhaps", "migrate_set_capability: Expected 'on' or 'off'\n"),
                           ("migrate_set_capability xbzrle on", "Error: Capability 'xbzrle' is not supported by Ferry\n"),
                           ("migrate_start_postcopy",
                            "Error: Enable postcopy with migrate_set_capability before the start of migration\n"),
                           ("migrate_recover tcp:127.0.0.1:1", "Error: Migrate recover can only be run when postcopy is paused.\n"),
                           ("migrate_pause", "Error: migrate-pause is currently only supported during postcopy-active "
                                             "or postcopy-recover state\n"),
                           ("migrate -d -r tcp:127.0.0.1:1", "Error: Cannot resume if there is no paused migration\n"),
                           ("stop now", "stop: extraneous characters at the end of line\n")]:
            reply = await hmp(src, line)
            if text is None:
                assert reply.startswith("Error: ") and reply.count("\n") == 1, (line, reply)
            else:
                assert reply == text, (line, reply)
        assert await src.qmp.execute("query-migrate-parameters") == before
        assert await hmp(src, "info migrate") == "", "a refused migrate left no migration behind"
        assert (await src.qmp.execute("query-status"))["status"] == "running"
        assert "migrate_set_parameter parameter value" in await hmp(src, "help")
        assert await hmp(src, "help c") == "cont|c  -- resume emulation\n"

        # The destination listens, as HMP's migrate_incoming asks.
        assert await hmp(dst, "migrate_incoming " + uri) == ""
        assert f"socket address: [\n\t{uri}\n]\n" in await hmp(dst, "info migrate")

        # Slow at first, so `info migrate` sees it active; then HMP's sizes speed it up.
        assert await hmp(src, "migrate_set_parameter max-bandwidth 32M") == ""
        assert (await src.qmp.execute("query-migrate-parameters"))["max-bandwidth"] == 32 << 20
        assert "max-bandwidth: 33554432 bytes/second\n" in await hmp(src, "info migrate_parameters")
        assert "events: on\n" in await hmp(src, "info migrate_capabilities")
        await asyncio.sleep(0.5)
        assert await hmp(src, "migrate -d " + uri) == ""
        active = await hmp_until(src, "info migrate", r"^Migration status: active$")
        assert re.search(r"^transferred ram: \d+ kbytes$", active, re.M), active
        assert "total ram: 262144 kbytes\n" in active and "page size: 4 kbytes\n" in active
        assert await hmp(src, "migrate -d " + uri) == "Error: There's a migration process in progress\n"
        assert await hmp(src, "migrate_set_parameter max-bandwidth 1G") == ""
        assert (await src.qmp.execute("query-migrate-parameters"))["max-bandwidth"] == 1 << 30
        done = await hmp_until(src, "info migrate", r"^Migration status: (completed|failed)")
        assert done.startswith("Migration status: completed\n"), done
        assert re.search(r"^downtime: \d+ ms$", done, re.M) and "remaining ram: 0 kbytes\n" in done, done
        assert await hmp(src, "info status") == "VM status: paused (postmigrate)\n"
        await hmp_until(dst, "info status", r"^VM status: running$", timeout=10)
        assert (await hmp(dst, "info migrate")).startswith("Migration status: completed\n")

        # The destination goes away; `cont` takes the source guest up again where it stopped.
        last = beats(source.serial)[-1][0]
        assert_verified_clean(await destination.quit())
        resumed = asyncio.ensure_future(wait_for_event(src.qmp, "RESUME", timeout=20))
        assert await hmp(src, "cont") == ""
        await resumed
        assert (await src.qmp.execute("query-status"))["status"] == "running"
        await asyncio.sleep(1.0)
        after = [s for s, _ in beats(source.serial) if s > last]
        assert after and after[0] == last + 1 and len(after) >= 5, after
        # And it may migrate again (here: refused URI, the guest runs on).
        assert (await hmp(src, "migrate -d bogus:x")).startswith("Error: ")
        assert await hmp(src, "info status") == "VM status: running\n"
        assert_verified_clean(await source.quit())

    asyncio.run(scenario())


def test_stop_cont_quit_through_hmp(vms):
    vm = vms("vm", "--cpus", "1", "--memory", "128M")

    async def scenario():
        await vm.connect()
        stopped = asyncio.ensure_future(wait_for_event(vm.qmp, "STOP", timeout=20))
        assert await hmp(vm, "stop") == ""
        await stopped
        assert await hmp(vm, "info status") == "VM status: paused\n"
        assert (await vm.qmp.execute("query-status"))["status"] == "paused"
        assert await hmp(vm, "c") == ""
        assert await hmp(vm, "info status") == "VM status: running\n"
        assert re.fullmatch(r"10\.0\.0 \(ferry [^)]+\)\n", await hmp(vm, "info version"))
        # A quit refused (no such CPU) quits nothing: what follows a reply runs within a second.
        with pytest.raises(ExecuteError, match="Invalid CPU index"):
            await hmp(vm, "quit", **{"cpu-index": 5})
        await asyncio.sleep(1.5)
        assert (await vm.qmp.execute("query-status"))["status"] == "running"
        shutdown = asyncio.ensure_future(wait_for_event(vm.qmp, "SHUTDOWN", timeout=20))
        assert await hmp(vm, "quit") == ""
        assert (await shutdown)["data"]["reason"] == "host-qmp-quit"
        try:
            await vm.qmp.disconnect()
        except EOFError:
            pass    # Ferry (like QEMU) may close the socket after quit before the client's own disconnect
        assert vm.proc.wait(timeout=20) == 0

    asyncio.run(scenario())


def test_qmp_schema_matches_the_commands_answered(running_vm):
    _, sock, _ = running_vm

    async def scenario():
        client = QMPClient("schema")
        await client.connect(str(sock))
        schema = await client.execute("query-qmp-schema")
        by_name = {entry["name"]: entry for entry in schema}
        assert len(by_name) == len(schema), "every name once"
        commands = {e["name"] for e in schema if e["meta-type"] == "command"}
        events = {e["name"] for e in schema if e["meta-type"] == "event"}
        listed = {c["name"] for c in await client.execute("query-commands")}
        assert commands == listed
        assert {"human-monitor-command", "query-qmp-schema", "migrate", "cont"} <= commands
        assert events == {"MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "SHUTDOWN", "GUEST_PANICKED", "BALLOON_CHANGE"}

        # Every type an entry names is defined.
        for entry in schema:
            for key in ("arg-type", "ret-type", "element-type"):
                if key in entry:
                    assert entry[key] in by_name, (entry["name"], entry[key])
            for member in entry.get("members", []) if entry["meta-type"] == "object" else []:
                assert member["type"] in by_name, (entry["name"], member)
        hmp_args = by_name[by_name["human-monitor-command"]["arg-type"]]["members"]
        assert {m["name"] for m in hmp_args} == {"command-line", "cpu-index"}
        assert by_name["human-monitor-command"]["ret-type"] == "str"
        caps = {c["capability"] for c in await client.execute("query-migrate-capabilities")}
        assert set(by_name["MigrationCapability"]["values"]) == caps
        params = await client.execute("query-migrate-parameters")
        assert {m["name"] for m in by_name["MigrationParameters"]["members"]} == set(params)

        # Every listed command is answered (the harmless ones run; the rest at least decode) ...
        for name in sorted(commands):
            if name == "query-balloon":
                # This VM has no balloon: QEMU's answer for that.
                with pytest.raises(ExecuteError) as absent:
                    await client.execute(name)
                assert absent.value.error_class == "DeviceNotActive", name
            elif name.startswith("query-") or name == "migrate-set-parameters":
                await client.execute(name)
            elif name not in ("quit", "stop", "cont", "migrate_cancel", "qmp_capabilities"):
                with pytest.raises(ExecuteError) as refused:
                    await client.execute(name, {})
                assert refused.value.error_class == "GenericError", name
        # ... and nothing else is.
        for name in ("query-cpus", "system_reset", "migrate-continue", "human_monitor_command", "x-exit-preconfig"):
            with pytest.raises(ExecuteError) as missing:
                await client.execute(name)
            assert missing.value.error_class == "CommandNotFound", name
        await client.disconnect()

    asyncio.run(scenario())


def test_monitor_stdio_speaks_hmp_on_the_terminal(ferry, tmp_path):
    import subprocess
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([ferry, "run", "--memory", "128M", "--serial", "none", "--qmp", f"unix:{sock}",
                             "-monitor", "stdio"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("info status\nfrobnicate\nstop\ninfo status\nmigrate_set_parameter max-bandwidth 1G\n"
                                "info migrate_parameters\nquit\n", timeout=30)
    assert proc.returncode == 0, err
    assert out.startswith("QEMU 10.0.0 monitor"), out
    assert "(qemu) VM status: running\n(qemu) unknown command: 'frobnicate'\n(qemu) (qemu) VM status: paused\n" in out, out
    assert "max-bandwidth: 1073741824 bytes/second\n" in out, out

    both = subprocess.run([ferry, "run", "--monitor", "stdio"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)
    assert both.returncode == 2 and "--monitor stdio needs --serial file:PATH or none" in both.stderr, both.stderr


def test_monitor_stdio_on_a_pseudo_terminal(ferry, tmp_path):
    """The same lines typed at a terminal: ferry's stdin and stdout are a pty, as in a shell."""
    import os
    import pty
    import select
    import subprocess
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([ferry, "run", "--memory", "128M", "--serial", "none", "--monitor", "stdio"],
                            stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, close_fds=True)
    os.close(terminal)
    seen = b""

    def read_until(marker, timeout=20):
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(controller, 4096)
                except OSError:
                    break
        return seen

    try:
        read_until(b"(qemu) ")
        os.write(controller, b"info status\n")
        read_until(b"VM status: running")
        os.write(controller, b"migrate_set_parameter downtime-limit 123\n")
        os.write(controller, b"info migrate_parameters\n")
        read_until(b"downtime-limit: 123 ms")
        os.write(controller, b"no-such-command\n")
        read_until(b"unknown command: 'no-such-command'")
        os.write(controller, b"quit\n")
        assert proc.wait(timeout=20) == 0, proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


def test_cont_is_refused_after_a_failed_incoming_load(vms, tmp_path):
    """HMP's migrate_incoming keeps the destination after a failed load; it holds no valid guest, so no cont."""
    import socket
    destination = vms("dst", "--cpus", "1", "--memory", "128M", "--incoming", "defer")
    path = tmp_path / "incoming.sock"

    async def scenario():
        dst = await destination.connect()
        assert await hmp(dst, f"migrate_incoming unix:{path}") == ""
        with socket.socket(socket.AF_UNIX) as garbage:
            garbage.connect(str(path))
            garbage.sendall(b"this is not a migration stream" * 10)
        failed = await hmp_until(dst, "info migrate", r"^Migration status: failed")
        assert failed.startswith("Migration status: failed ("), failed
        assert await hmp(dst, "cont") == "Error: the guest cannot be resumed from state 'inmigrate'\n"
        assert await hmp(dst, "info status") == "VM status: paused (inmigrate)\n"
        assert destination.proc.poll() is None, "the destination stays up (HMP migrate_incoming does not exit on error)"

    asyncio.run(scenario())
