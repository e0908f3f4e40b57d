"""Descriptors passed on the QMP socket (SCM_RIGHTS), driven with qemu.qmp's send_fd_scm as libvirt drives QEMU:
getfd/closefd and fd:NAME migration URIs, add-fd/remove-fd/query-fdsets, QEMU's refusals, and no descriptor leaked."""
import asyncio
import os
import socket
import time

import pytest
from qemu.qmp import ExecuteError, QMPClient

from conftest import assert_beats_continue, assert_verified_clean
from test_migration import vms, wait_status  # noqa: F401  (vms is a fixture)


def open_fds(pid):
    return set(os.listdir(f"/proc/{pid}/fd"))


def describe(pid, fds):
    """What each descriptor is, for a failure message."""
    def target(fd):
        try:
            return os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            return "?"
    return {fd: target(fd) for fd in sorted(fds)}


async def settle(pid, expected, timeout=5):
    """Waits until the process holds exactly `expected` descriptors (a closing connection lets go of its own a moment later)."""
    deadline = time.monotonic() + timeout
    while open_fds(pid) != expected:
        assert time.monotonic() < deadline, f"left open: {describe(pid, open_fds(pid) - expected)}, gone: {sorted(expected - open_fds(pid))}"
        await asyncio.sleep(0.05)


async def steady(pid, quiet=0.5, timeout=5):
    """The process's descriptors once they stop changing for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = open_fds(pid), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "descriptors keep changing"
        await asyncio.sleep(0.05)
        now = open_fds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


async def pass_fd(client, fd, command, arguments):
    """qemu.qmp's recipe: the descriptor rides on one space, then the command names it."""
    client.send_fd_scm(fd)
    return await client.execute(command, arguments)


def test_fd_name_migration_over_a_passed_socketpair(vms):
    """Each side gets one end of a socketpair with getfd; migrate-incoming and migrate use fd:NAME; the guest arrives whole."""
    source = vms("src", "--cpus", "2", "--memory", "256M", "--workload", "dirty-rate=16M,working-set=32M")
    destination = vms("dst", "--cpus", "2", "--memory", "256M", "--incoming", "defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await asyncio.sleep(1.0)
        before = open_fds(source.proc.pid), open_fds(destination.proc.pid)
        ours, theirs = socket.socketpair()
        inodes = (f"socket:[{os.fstat(ours.fileno()).st_ino}]", f"socket:[{os.fstat(theirs.fileno()).st_ino}]")
        await pass_fd(src.qmp, ours.fileno(), "getfd", {"fdname": "mig"})
        await pass_fd(dst.qmp, theirs.fileno(), "getfd", {"fdname": "mig"})
        ours.close()
        theirs.close()                      # the only copies are in the two ferry processes now
        await dst.qmp.execute("migrate-incoming", {"uri": "fd:mig"})
        await src.qmp.execute("migrate", {"uri": "fd:mig"})
        info = await wait_status(src.qmp, ("completed", "failed"))
        assert info["status"] == "completed", info
        assert (await wait_status(dst.qmp, ("completed", "failed")))["status"] == "completed"
        # fd:NAME consumed the descriptor (QEMU's monitor_get_fd): the name is gone, and so is the descriptor.
        with pytest.raises(ExecuteError, match="File descriptor named 'mig' not found"):
            await src.qmp.execute("closefd", {"fdname": "mig"})
        # The migration closed them.  (The source also keeps the finished migration's cancel eventfd until the next one.)
        for pid, inode in ((source.proc.pid, inodes[0]), (destination.proc.pid, inodes[1])):
            deadline = time.monotonic() + 5
            while inode in describe(pid, open_fds(pid)).values():
                assert time.monotonic() < deadline, f"{inode} still open in {pid}"
                await asyncio.sleep(0.05)
        assert set(describe(source.proc.pid, open_fds(source.proc.pid) - before[0]).values()) <= {"anon_inode:[eventfd]"}
        await settle(destination.proc.pid, before[1])
        await asyncio.sleep(1.0)
        await src.quit()
        assert_verified_clean(await dst.quit())
        assert_beats_continue(source.serial, destination.serial)

    asyncio.run(scenario())


def test_save_to_a_passed_file_and_restore_from_one(vms, tmp_path):
    """A file the client opened: saved through fd:NAME on one process, loaded through fd:NAME on another."""
    state = tmp_path / "vm.state"
    source = vms("src", "--memory", "128M", "--workload", "dirty-rate=8M,working-set=16M")
    destination = vms("dst", "--memory", "128M", "--incoming", "defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await asyncio.sleep(1.0)
        out = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        await pass_fd(src.qmp, out, "getfd", {"fdname": "save"})
        os.close(out)
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.qmp.execute("migrate", {"uri": "fd:save"})
        assert (await wait_status(src.qmp, ("completed", "failed")))["status"] == "completed"
        assert state.read_bytes()[:8] == b"FERRYMIG"
        back = os.open(state, os.O_RDONLY)
        await pass_fd(dst.qmp, back, "getfd", {"fdname": "restore"})
        os.close(back)
        await dst.qmp.execute("migrate-incoming", {"uri": "fd:restore"})
        assert (await wait_status(dst.qmp, ("completed", "failed")))["status"] == "completed"
        await src.quit()
        await asyncio.sleep(1.0)
        assert_verified_clean(await dst.quit())
        assert_beats_continue(source.serial, destination.serial)

    asyncio.run(scenario())


def test_fdsets_round_trip_refusals_and_no_leak(vms, tmp_path):
    vm = vms("vm", "--memory", "128M")

    async def scenario():
        await vm.connect()
        client, pid = vm.qmp, vm.proc.pid
        baseline = open_fds(pid)
        names = {c["name"] for c in await client.execute("query-commands")}
        assert {"getfd", "closefd", "add-fd", "remove-fd", "query-fdsets"} <= names

        data = tmp_path / "data"
        data.write_bytes(b"x")
        rw, ro = os.open(data, os.O_RDWR), os.open(data, os.O_RDONLY)
        first = await pass_fd(client, rw, "add-fd", {"fdset-id": 3, "opaque": "rw"})
        assert first["fdset-id"] == 3
        assert os.readlink(f"/proc/{pid}/fd/{first['fd']}") == str(data)
        second = await pass_fd(client, ro, "add-fd", {})
        assert second["fdset-id"] == 0                    # the lowest id no set has
        third = await pass_fd(client, ro, "add-fd", {"fdset-id": 3})
        os.close(rw)
        os.close(ro)
        assert await client.execute("query-fdsets") == [
            {"fdset-id": 0, "fds": [{"fd": second["fd"]}]},
            {"fdset-id": 3, "fds": [{"fd": first["fd"], "opaque": "rw"}, {"fd": third["fd"]}]},
        ]
        for arguments, message in [
            ({"fdset-id": 3, "fd": 9999}, "File descriptor named 'fdset-id:3, fd:9999' not found"),
            ({"fdset-id": 7}, "File descriptor named 'fdset-id:7' not found"),
            ({"fdset-id": 0, "fd": first["fd"]}, f"File descriptor named 'fdset-id:0, fd:{first['fd']}' not found"),
        ]:
            with pytest.raises(ExecuteError, match=message):
                await client.execute("remove-fd", arguments)
        await client.execute("remove-fd", {"fdset-id": 3, "fd": first["fd"]})
        assert await client.execute("query-fdsets") == [
            {"fdset-id": 0, "fds": [{"fd": second["fd"]}]}, {"fdset-id": 3, "fds": [{"fd": third["fd"]}]}]
        await client.execute("remove-fd", {"fdset-id": 3})
        await client.execute("remove-fd", {"fdset-id": 0})
        assert await client.execute("query-fdsets") == []
        await settle(pid, baseline)

        # QEMU's refusals; a descriptor that came with a refused command is closed, as QEMU closes it.
        spare = os.open(data, os.O_RDONLY)
        for command, arguments, message, with_fd in [
            ("getfd", {"fdname": "x"}, "No file descriptor supplied via SCM_RIGHTS", False),
            ("add-fd", {}, "No file descriptor supplied via SCM_RIGHTS", False),
            ("getfd", {"fdname": "1x"}, "Parameter 'fdname' expects a name not starting with a digit", True),
            ("add-fd", {"fdset-id": -1}, "Parameter 'fdset-id' expects a non-negative value", True),
            ("closefd", {"fdname": "nope"}, "File descriptor named 'nope' not found", False),
            ("getfd", {}, "Parameter 'fdname' is missing", False),
            ("getfd", {"fdname": 3}, "Invalid parameter type for 'fdname', expected: string", False),
            ("add-fd", {"fdset-id": "1"}, "Invalid parameter type for 'fdset-id', expected: integer", False),
            ("add-fd", {"opaque": 1}, "Invalid parameter type for 'opaque', expected: string", False),
            ("add-fd", {"fdset-id": 1.5}, "Invalid parameter type for 'fdset-id', expected: integer", False),
            ("remove-fd", {}, "Parameter 'fdset-id' is missing", False),
            ("remove-fd", {"fdset-id": 0, "fd": "1"}, "Invalid parameter type for 'fd', expected: integer", False),
            ("getfd", {"fdname": "x", "extra": 1}, "Parameter 'extra' is unexpected", False),
            ("migrate", {"uri": "fd:nope"}, "File descriptor named 'nope' has not been found", False),
        ]:
            if with_fd:
                client.send_fd_scm(spare)
            with pytest.raises(ExecuteError, match=message):
                await client.execute(command, arguments)
        assert (await client.execute("query-status"))["status"] == "running"
        await settle(pid, baseline)

        # getfd replaces a descriptor of the same name (closing it); closefd closes it.
        await pass_fd(client, spare, "getfd", {"fdname": "f"})
        await pass_fd(client, spare, "getfd", {"fdname": "f"})
        assert len(open_fds(pid) - baseline) == 1
        await client.execute("closefd", {"fdname": "f"})
        await settle(pid, baseline)

        # HMP has getfd and closefd too, taking the descriptor the QMP client passed.
        hmp = lambda line: client.execute("human-monitor-command", {"command-line": line})  # noqa: E731
        client.send_fd_scm(spare)
        assert await hmp("getfd viahmp") == ""
        assert await hmp("closefd viahmp") == ""
        assert await hmp("closefd viahmp") == "Error: File descriptor named 'viahmp' not found\n"
        assert await hmp("getfd again") == "Error: No file descriptor supplied via SCM_RIGHTS\n"
        assert await hmp("getfd") == "getfd: missing argument 'fdname'\n"
        await settle(pid, baseline)

        # Descriptors passed and never claimed die with their connection.
        await client.disconnect()
        idle = await steady(pid)
        other = QMPClient("other")
        await other.connect(str(vm.sock))
        with_other = await steady(pid)
        for _ in range(3):
            other.send_fd_scm(spare)
        await other.execute("query-status")
        assert len(open_fds(pid) - with_other) == 1       # each message's descriptors replace the last one's
        await other.disconnect()
        await settle(pid, idle)
        os.close(spare)
        vm.qmp = QMPClient("vm")
        await vm.connect()
        await vm.quit()

    asyncio.run(scenario())


def test_mapped_ram_direct_io_through_an_fdset(vms, tmp_path):
    """libvirt's recipe for mapped-ram with direct-io: the file opened twice by the client (buffered and
    O_DIRECT), both added to one fdset, `migrate` to file:/dev/fdset/N; the restore likewise."""
    state = tmp_path / "vm.mapped"
    source = vms("src", "--memory", "128M", "--workload", "dirty-rate=8M,working-set=16M")
    destination = vms("dst", "--memory", "128M", "--incoming", "defer")
    settings = {"capabilities": [{"capability": "mapped-ram", "state": True}, {"capability": "multifd", "state": True}]}

    async def add_pair(client, flags, fdset):
        for extra in (0, os.O_DIRECT):
            fd = os.open(state, flags | extra, 0o600)
            await pass_fd(client, fd, "add-fd", {"fdset-id": fdset, "opaque": "direct" if extra else "buffered"})
            os.close(fd)

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await asyncio.sleep(1.0)
        for client in (src.qmp, dst.qmp):
            await client.execute("migrate-set-capabilities", settings)
            await client.execute("migrate-set-parameters", {"multifd-channels": 2, "direct-io": True})
        await add_pair(src.qmp, os.O_RDWR | os.O_CREAT, 7)
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.qmp.execute("migrate", {"uri": "file:/dev/fdset/7"})
        info = await wait_status(src.qmp, ("completed", "failed"))
        assert info["status"] == "completed", info
        assert state.read_bytes()[:8] == b"FERRYMRF"
        await add_pair(dst.qmp, os.O_RDONLY, 2)
        await dst.qmp.execute("migrate-incoming", {"uri": "file:/dev/fdset/2"})
        assert (await wait_status(dst.qmp, ("completed", "failed")))["status"] == "completed"
        await src.quit()
        await asyncio.sleep(1.0)
        assert_verified_clean(await dst.quit())
        assert_beats_continue(source.serial, destination.serial)

    asyncio.run(scenario())
