"""Postcopy, driven with qemu.qmp as a QEMU user drives it: `postcopy-ram` on both sides,
`-incoming defer` + `migrate-incoming`, `migrate` with a bandwidth the guest out-dirties, then
`migrate-start-postcopy`.  The same recipe runs against QEMU 10 on the exported guest, and
QEMU's refusals are checked on both with their texts."""
import asyncio
import time

import pytest

from test_migration import wait_status
from test_multifd import assert_guest_moved, guest_beats, needs_qemu, refused, vms, wait_guest_ready  # noqa: F401


async def postcopy_recipe(src, dst, preempt=False, postcopy_bandwidth=None):
    """QEMU's postcopy recipe, command for command; returns the source's final query-migrate."""
    for client in (src, dst):
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True},
                                                                           {"capability": "postcopy-preempt", "state": preempt}]})
        caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
        assert caps["postcopy-ram"] is True and caps["postcopy-preempt"] is preempt
    # QEMU's blocktime figures, asked on the destination.
    await dst.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-blocktime", "state": True}]})
    # 4 MiB/s: less than the guest dirties (16 MB/s), so precopy alone never ends.
    await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 20, "downtime-limit": 1})
    if postcopy_bandwidth is not None:
        await src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": postcopy_bandwidth})
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
        info = await postcopy_recipe(src.qmp, dst.qmp, preempt, postcopy_bandwidth=64 << 20)
        ram = info["ram"]
        assert ram["postcopy-bytes"] > 0, ram
        assert ram["remaining"] == 0
        # The destination ran from the switch: the guest moved, beats in sequence, verifies clean.
        deadline = time.monotonic() + 10
        while (await dst.qmp.execute("query-migrate")).get("status") != "completed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await assert_guest_moved(source, destination)
        # postcopy-blocktime's figures once completed, as QEMU 10.0 gives them (one vCPU here);
        # Ferry adds QEMU 10.1's latencies (24 buckets of [2^N, 2^(N+1)) µs).
        incoming = await dst.qmp.execute("query-migrate")
        assert isinstance(incoming["postcopy-blocktime"], int), incoming
        assert len(incoming["postcopy-vcpu-blocktime"]) == 1, incoming
        if kind == "ferry":
            assert len(incoming["postcopy-latency-dist"]) == 24 and len(incoming["postcopy-vcpu-latency"]) == 1, incoming
            assert sum(incoming["postcopy-latency-dist"]) >= incoming["x-ferry-postcopy"]["requests"], incoming
            assert incoming["postcopy-latency"] > 0 and "postcopy-non-vcpu-latency" in incoming, incoming
        if kind == "ferry":
            postcopy = (await dst.qmp.execute("query-migrate"))["x-ferry-postcopy"]
            assert postcopy["placed-pages"] > 0 and postcopy["requests"] == ram["postcopy-requests"], (postcopy, ram)
            roles = [c["role"] for c in info["x-ferry-channels"]]
            assert ("postcopy-preempt" in roles) == preempt, roles
            # With a preempt channel the background went paced at max-postcopy-bandwidth; without
            # one nothing is paced (a request would queue behind the main socket's unsent bytes).
            assert info["x-ferry-postcopy"]["pacing"] == (64 << 20 if preempt else 0), info["x-ferry-postcopy"]
            # ... and held it to the end (no share given up: max-postcopy-bandwidth is the pace).
            assert info["x-ferry-postcopy"]["pacing-now"] == (64 << 20 if preempt else 0), info["x-ferry-postcopy"]
            assert info["x-ferry-postcopy"]["yields"] == 0, info["x-ferry-postcopy"]     # 4 KiB pages never yield
            # Pages sent again on the preempt channel are among its urgent pages (none without one).
            figures = info["x-ferry-postcopy"]
            assert 0 <= figures["resent-pages"] <= figures["urgent-pages"], figures
            assert preempt or figures["resent-pages"] == 0, figures
        await destination.quit()
        await source.quit()

    asyncio.run(scenario())


def test_postcopy_pacing_parameter(vms):
    """Ferry's own x-ferry-postcopy-pacing: a percentage, read back, out-of-range values refused."""
    vm = vms("ferry", "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        assert (await client.execute("query-migrate-parameters"))["x-ferry-postcopy-pacing"] == 95
        await client.execute("migrate-set-parameters", {"x-ferry-postcopy-pacing": 50})
        assert (await client.execute("query-migrate-parameters"))["x-ferry-postcopy-pacing"] == 50
        for bad in (101, -1):
            message = await refused(client, "migrate-set-parameters", {"x-ferry-postcopy-pacing": bad})
            assert message == "Parameter 'x-ferry-postcopy-pacing' expects an integer in the range of 0 to 100", message
        message = await refused(client, "migrate-set-parameters", {"x-ferry-postcopy-pacing": "fast"})
        assert "x-ferry-postcopy-pacing" in message, message
        assert (await client.execute("query-migrate-parameters"))["x-ferry-postcopy-pacing"] == 50
        await vm.quit()

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


class Relay:
    """A TCP relay the test cuts, as a network failure would: every connection to `port` is
    forwarded both ways to `target` until `cut()` shuts them all."""

    def __init__(self, target):
        import socket
        import threading
        self.target, self.sockets, self.lock = target, [], threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import socket
        import threading
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [inbound, outbound]
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(a, b):
        import socket
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        import socket
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_migrate_status(client, wanted, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        info = await client.execute("query-migrate")
        if info.get("status") == wanted:
            return info
        assert time.monotonic() < deadline, (wanted, info)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
@pytest.mark.parametrize("breaker", ["migrate-pause", "cut"])
def test_postcopy_recovery_qemu_recipe(vms, kind, breaker):
    """Postcopy with preempt, broken in the middle (QEMU's `migrate-pause`, or a relay the test
    cuts): both sides wait in postcopy-paused, the source guest stays stopped; `migrate-recover`
    on the destination and `migrate` with `resume: true` on the source finish it, and the guest
    beats on at the destination with no verify error.  The same commands drive QEMU 10."""
    source = vms(kind, "src")
    destination = vms(kind, "dst", incoming="defer")

    async def scenario():
        src, dst = (await source.connect()).qmp, (await destination.connect()).qmp
        await wait_guest_ready(source)
        for client in (src, dst):
            await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "postcopy-ram", "state": True},
                                                                               {"capability": "postcopy-preempt", "state": True}]})
        # Slow enough after the switch that the break comes with most pages still to send.
        await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 20, "downtime-limit": 1, "max-postcopy-bandwidth": 1 << 20})
        await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = int((await dst.execute("query-migrate"))["socket-address"][0]["port"])
        relay = Relay(port)
        await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{relay.port}"})
        deadline = time.monotonic() + 30
        while True:
            info = await src.execute("query-migrate")
            assert info["status"] in ("setup", "active") and time.monotonic() < deadline, info
            if info["status"] == "active" and info["ram"]["transferred"] > 2 << 20:
                break
            await asyncio.sleep(0.05)
        await src.execute("migrate-start-postcopy")
        await wait_migrate_status(src, "postcopy-active")
        await wait_migrate_status(dst, "postcopy-active")
        await asyncio.sleep(0.5)
        if breaker == "migrate-pause":
            await src.execute("migrate-pause")
        else:
            relay.cut()
        paused = await wait_migrate_status(src, "postcopy-paused")
        await wait_migrate_status(dst, "postcopy-paused")
        if breaker == "migrate-pause":
            assert "Postcopy migration is paused by the user" in paused.get("error-desc", ""), paused
        # The source guest stays stopped, and QEMU's refusals hold while paused.
        assert (await src.execute("query-status"))["status"] == "finish-migrate"
        assert await refused(src, "migrate_cancel", {}) == "Postcopy migration in progress, cannot cancel."
        assert await refused(src, "migrate-pause", {}) == \
            "migrate-pause is currently only supported during postcopy-active or postcopy-recover state"
        assert await refused(dst, "migrate", {"uri": "tcp:127.0.0.1:1", "resume": True}) == "Cannot resume if there is no paused migration"
        # The recovery, as QEMU users run it; with the relay cut, on the port the migration came
        # in on (the first listener is released once paused, as QEMU releases it).
        recovered = port if breaker == "cut" else free_port()
        await dst.execute("migrate-recover", {"uri": f"tcp:127.0.0.1:{recovered}"})
        await src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
        await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{recovered}", "resume": True})
        info = await wait_status(src, ("completed", "failed", "cancelled"))
        assert info["status"] == "completed", info
        await wait_migrate_status(dst, "completed")
        await assert_guest_moved(source, destination)
        if kind == "ferry":
            assert (await dst.execute("query-migrate"))["x-ferry-postcopy"]["pauses"] == 1
            assert info["x-ferry-postcopy"]["pauses"] == 1
        relay.cut()
        await destination.quit()
        await source.quit()

    asyncio.run(scenario())
