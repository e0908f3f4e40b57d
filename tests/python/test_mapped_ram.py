"""mapped-ram, driven with qemu.qmp as a QEMU user drives it: `migrate-set-capabilities`
mapped-ram and multifd, `migrate-set-parameters` multifd-channels and direct-io, `migrate`
to `file:PATH`; the restore on an `-incoming defer` machine with the same settings and
`migrate-incoming file:PATH`.  The same recipe runs against QEMU 10 on the exported guest
(each VMM restores its own file: the formats differ), and QEMU's refusals are checked on both."""
import asyncio
import os

import pytest

from conftest import assert_beats_continue, assert_verified_clean
from test_migration import wait_status
from test_multifd import assert_guest_moved, needs_qemu, refused, vms, wait_guest_ready  # noqa: F401

CHANNELS = 4


async def mapped_ram_settings(client, direct):
    await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "mapped-ram", "state": True},
                                                                       {"capability": "multifd", "state": True}]})
    await client.execute("migrate-set-parameters", {"multifd-channels": CHANNELS, "direct-io": direct})
    caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
    assert caps["mapped-ram"] is True and caps["multifd"] is True
    assert (await client.execute("query-migrate-parameters"))["direct-io"] is direct


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
@pytest.mark.parametrize("direct", [False, True])
def test_mapped_ram_save_and_restore_qemu_recipe(vms, kind, direct, tmp_path):
    state = tmp_path / "vm.mapped"
    source = vms(kind, "src")

    async def save():
        src = (await source.connect()).qmp
        await wait_guest_ready(source)
        await mapped_ram_settings(src, direct)
        await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.execute("migrate", {"uri": f"file:{state}"})
        info = await wait_status(src, ("completed", "failed", "cancelled"))
        assert info["status"] == "completed", info
        assert (await src.execute("query-status"))["status"] == "postmigrate"
        return info

    async def restore():
        destination = vms(kind, "dst", incoming="defer")
        dst = (await destination.connect()).qmp
        await mapped_ram_settings(dst, direct)
        await dst.execute("migrate-incoming", {"uri": f"file:{state}"})
        info = await wait_status(dst, ("completed", "failed"))
        assert info["status"] == "completed", info
        # The source's guest was running at the save: the restored one runs on.
        deadline = asyncio.get_running_loop().time() + 10
        while (await dst.execute("query-status"))["status"] != "running":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await assert_guest_moved(source, destination)
        return destination

    async def scenario():
        info = await save()
        size = os.stat(state).st_size
        # Every page at a fixed offset: the file is the guest's size plus metadata, however often pages were written.
        assert 256 << 20 <= size <= (256 << 20) + (16 << 20), size
        if kind == "ferry":
            assert os.stat(state).st_blocks * 512 < size, "zero pages are holes"
            assert info["x-ferry-mapped-ram"]["generation"] == 1 and info["x-ferry-mapped-ram"]["incremental"] is False
        destination = await restore()
        await source.quit()
        if kind == "ferry":
            assert_verified_clean(await destination.quit())
        else:
            await destination.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_mapped_ram_with_compression_is_refused_with_qemus_text(vms, kind, tmp_path):
    """QEMU 10 takes multifd-compression with mapped-ram and refuses the migrate; so does Ferry."""
    vm = vms(kind, "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "mapped-ram", "state": True},
                                                                           {"capability": "multifd", "state": True}]})
        await client.execute("migrate-set-parameters", {"multifd-compression": "zstd"})
        message = await refused(client, "migrate", {"uri": f"file:{tmp_path / 'never'}"})
        assert "Cannot use compression with mapped-ram" in message, message
        assert (await client.execute("query-status"))["status"] == "running"
        await client.disconnect()

    asyncio.run(scenario())


def test_ferry_restores_a_mapped_ram_file_from_the_command_line_and_honours_offset(ferry, vms, tmp_path):
    """`--incoming file:PATH,offset=N` reads a mapped-ram file N bytes in (the file says it is mapped-ram);
    the N bytes before it are the caller's and stay as they were."""
    import subprocess
    state = tmp_path / "vm.mapped"
    prefix = b"libvirt-like header\n" + bytes(4096 - 20)
    state.write_bytes(prefix)
    source = vms("ferry", "src")

    async def save():
        src = (await source.connect()).qmp
        await wait_guest_ready(source)
        await src.execute("migrate-set-capabilities", {"capabilities": [{"capability": "mapped-ram", "state": True}]})
        await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.execute("migrate", {"uri": f"file:{state},offset=4096"})
        assert (await wait_status(src, ("completed", "failed")))["status"] == "completed"
        await source.quit()

    asyncio.run(save())
    assert state.read_bytes()[:4096] == prefix
    assert state.read_bytes()[4096:4104] == b"FERRYMRF"
    serial = tmp_path / "restored.log"
    result = subprocess.run([ferry, "run", "--memory", "256M", "--incoming", f"file:{state},offset=4096", "--serial", f"file:{serial}",
                             "--run-for", "1.5", "--verify-on-exit"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert_verified_clean(result.stderr)
    assert_beats_continue(source.serial, serial)


def test_lazy_restore_runs_the_guest_at_once_and_loads_the_rest(vms, tmp_path):
    """Ferry's x-ferry-lazy-restore, driven like the restore above: the guest runs as soon as
    the device state is in, its memory follows from the file, and the host and guest verifiers
    stay clean.  Refused on anything but a file."""
    state = tmp_path / "vm.mapped"
    source = vms("ferry", "src")

    async def scenario():
        src = (await source.connect()).qmp
        await wait_guest_ready(source)
        await mapped_ram_settings(src, False)
        await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await src.execute("migrate", {"uri": f"file:{state}"})
        assert (await wait_status(src, ("completed", "failed")))["status"] == "completed"

        destination = vms("ferry", "dst", incoming="defer")
        dst = (await destination.connect()).qmp
        await dst.execute("migrate-set-capabilities", {"capabilities": [{"capability": "x-ferry-lazy-restore", "state": True}]})
        message = await refused(dst, "migrate-incoming", {"uri": f"unix:{tmp_path / 'never.sock'}"})
        assert message == "Capability 'x-ferry-lazy-restore' restores a mapped-ram file: it needs a file: URI", message
        await mapped_ram_settings(dst, False)
        await dst.execute("migrate-incoming", {"uri": f"file:{state}"})
        info = await wait_status(dst, ("completed", "failed"))
        assert info["status"] == "completed", info
        deadline = asyncio.get_running_loop().time() + 30
        while not (info.get("x-ferry-lazy-restore") or {}).get("complete"):
            assert asyncio.get_running_loop().time() < deadline, info
            await asyncio.sleep(0.05)
            info = await dst.execute("query-migrate")
        lazy = info["x-ferry-lazy-restore"]
        assert lazy["loaded-units"] == lazy["total-units"] == (256 << 20) // 4096, lazy
        assert lazy["fault-pages"] + lazy["prefetched-pages"] >= lazy["total-units"], lazy
        assert (await dst.execute("query-status"))["status"] == "running"
        await assert_guest_moved(source, destination)
        await source.quit()
        assert_verified_clean(await destination.quit())

    asyncio.run(scenario())
