"""Postcopy, driven with qemu.qmp as a QEMU user drives it: `postcopy-ram` on both sides,
`-incoming defer` + `migrate-incoming`, `migrate` with a bandwidth the guest out-dirties, then
`migrate-start-postcopy`.  The same recipe runs against QEMU 10 on the exported guest, and
QEMU's refusals are checked on both with their texts."""
import asyncio
import time

import pytest

from test_migration import wait_status
from test_multifd import assert_guest_moved, guest_beats, needs_qemu, refused, vms, wait_guest_ready  # noqa: F401


async def postcopy_recipe(src, dst, preempt=False):
    """QEMU's postcopy recipe, command for command; returns the source's final query-migrate."""
    for client in (src, dst):
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True},
                                                                           {"capability": "postcopy-preempt", "state": preempt}]})
        caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
        assert caps["postcopy-ram"] is True and caps["postcopy-preempt"] is preempt
    # 4 MiB/s: less than the guest dirties (16 MB/s), so precopy alone never ends.
    await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 20, "downtime-limit": 1})
    await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    port = int((await dst.execute("query-migrate"))["socket-address"][0]["port"])
    await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    deadline = time.monotonic() + 30
    while True:
        info = await src.execute("query-migrate")
        assert info["status"] in ("setup", "active"), info
        if info["status"] == "active" and info["ram"]["transferred"] > 2 << 20:
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.05)
    await src.execute("migrate-start-postcopy")
    info = await wait_status(src, ("completed", "failed", "cancelled"))
    assert info["status"] == "completed", info
    return info


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
@pytest.mark.parametrize("preempt", [False, True], ids=["postcopy", "preempt"])
def test_postcopy_qemu_recipe(vms, kind, preempt):
    source = vms(kind, "src")
    destination = vms(kind, "dst", incoming="defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        await wait_guest_ready(source)
        info = await postcopy_recipe(src.qmp, dst.qmp, preempt)
        ram = info["ram"]
        assert ram["postcopy-bytes"] > 0, ram
        assert ram["remaining"] == 0
        # The destination ran from the switch: the guest moved, beats in sequence, verifies clean.
        deadline = time.monotonic() + 10
        while (await dst.qmp.execute("query-migrate")).get("status") != "completed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await assert_guest_moved(source, destination)
        if kind == "ferry":
            postcopy = (await dst.qmp.execute("query-migrate"))["x-ferry-postcopy"]
            assert postcopy["placed-pages"] > 0 and postcopy["requests"] == ram["postcopy-requests"], (postcopy, ram)
            roles = [c["role"] for c in info["x-ferry-channels"]]
            assert ("postcopy-preempt" in roles) == preempt, roles
        await destination.quit()
        await source.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_postcopy_refusals_are_qemus(vms, kind):
    vm = vms(kind, "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        message = await refused(client, "migrate-start-postcopy", {})
        assert message == "Enable postcopy with migrate_set_capability before the start of migration"
        message = await refused(client, "migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-preempt", "state": True}]})
        assert message == "Postcopy preempt requires postcopy-ram"
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True}]})
        message = await refused(client, "migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
        assert message == "Postcopy is not yet compatible with multifd"
        await vm.quit()

    asyncio.run(scenario())
