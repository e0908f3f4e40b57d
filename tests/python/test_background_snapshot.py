"""background-snapshot, driven with qemu.qmp as a QEMU user drives it: `migrate-set-capabilities`
background-snapshot, `migrate` to `file:PATH` while the guest runs on; the snapshot restored on an
`-incoming defer` machine with `migrate-incoming file:PATH`.  The same recipe runs against QEMU 10
on the exported guest (each VMM restores its own file), and QEMU's refusals are checked on both."""
import asyncio

import pytest

from conftest import assert_verified_clean
from test_migration import wait_status
from test_multifd import guest_beats, needs_qemu, refused, vms, wait_guest_ready  # noqa: F401


async def beats_after(vm, count, timeout=15):
    """The heartbeats once `count` more than now have arrived."""
    start = len(guest_beats(vm.serial))
    deadline = asyncio.get_running_loop().time() + timeout
    while len(guest_beats(vm.serial)) < start + count:
        assert asyncio.get_running_loop().time() < deadline, vm.serial.read_text()[-2000:]
        await asyncio.sleep(0.05)
    return guest_beats(vm.serial)


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_background_snapshot_qemu_recipe(vms, kind, tmp_path):
    state = tmp_path / "vm.snapshot"
    source = vms(kind, "src")

    async def scenario():
        src = (await source.connect()).qmp
        await wait_guest_ready(source)
        await src.execute("migrate-set-capabilities", {"capabilities": [{"capability": "background-snapshot", "state": True}]})
        caps = {c["capability"]: c["state"] for c in await src.execute("query-migrate-capabilities")}
        assert caps["background-snapshot"] is True
        await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        at_start = guest_beats(source.serial)[-1][0]
        await src.execute("migrate", {"uri": f"file:{state}"})
        info = await wait_status(src, ("completed", "failed", "cancelled"))
        assert info["status"] == "completed", info
        at_end = guest_beats(source.serial)[-1][0]
        # The guest ran on: never postmigrate, still beating, its verifier clean.
        assert (await src.execute("query-status"))["status"] == "running"
        assert all(err == 0 for *_, err in await beats_after(source, 3))
        if kind == "ferry":
            snapshot = info["x-ferry-background-snapshot"]
            assert snapshot["scanned-pages"] + snapshot["faulted-pages"] == (256 << 20) // 4096, snapshot
            assert snapshot["write-faults"] > 0 and "p99" in snapshot["fault-latency-us"], snapshot

        destination = vms(kind, "dst", incoming="defer")
        dst = (await destination.connect()).qmp
        await dst.execute("migrate-incoming", {"uri": f"file:{state}"})
        assert (await wait_status(dst, ("completed", "failed")))["status"] == "completed"
        deadline = asyncio.get_running_loop().time() + 10
        while (await dst.execute("query-status"))["status"] != "running":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        restored = await beats_after(destination, 5)
        # The image is the guest as it was when the snapshot started: its heartbeats go on
        # from a beat of the snapshot's span, and its own verifier finds every page as it left it.
        assert at_start + 1 <= restored[0][0] <= at_end + 1, (at_start, restored[0][0], at_end)
        assert all(err == 0 for *_, err in restored)
        if kind == "ferry":
            assert_verified_clean(await destination.quit())
        else:
            await destination.quit()
        await source.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
@pytest.mark.parametrize("other", ["auto-converge", "multifd"])
def test_background_snapshot_refusals_are_qemus(vms, kind, other):
    vm = vms(kind, "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        message = await refused(client, "migrate-set-capabilities",
                                {"capabilities": [{"capability": "background-snapshot", "state": True},
                                                  {"capability": other, "state": True}]})
        assert message == f"Background-snapshot is not compatible with {other}", message
        caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
        assert caps["background-snapshot"] is False and caps[other] is False
        await client.disconnect()

    asyncio.run(scenario())
