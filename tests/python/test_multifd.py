"""Multifd, driven with qemu.qmp exactly as a QEMU user drives it: `-incoming defer`
on the destination, `migrate-set-capabilities` with multifd and `migrate-set-parameters`
with multifd-channels on both sides, `migrate-incoming`, then `migrate`.  The same
recipe runs against QEMU 10 (microvm, the exported guest) when it is installed, to
show the recipe is QEMU's; the refusals whose texts are QEMU's are checked on both."""
import asyncio
import shutil
import subprocess
import time

import pytest
from qemu.qmp import ExecuteError

from conftest import HEARTBEAT, assert_beats_continue, assert_verified_clean
from qemu_microvm import microvm_command
from test_migration import VM, wait_status

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="QEMU 10 not installed (scripts/install-qemu.sh)")

MEMORY = "256M"
WORKLOAD = "dirty-rate=16M,working-set=64M"
CHANNELS = 4


class QemuVM(VM):
    """One QEMU 10 microvm process on the exported guest (serial on stdout, into the log), as test_migration.VM."""

    def __init__(self, image, cmdline, tmp_path, name, incoming=None):
        def command(sock, serial):
            argv = microvm_command(QEMU, image, MEMORY, 1, cmdline) + ["-qmp", f"unix:{sock},server=on,wait=off"]
            return argv + (["-incoming", incoming] if incoming else []), open(serial, "w")
        self.launch(tmp_path, name, command)

    async def quit(self):
        try:
            await self.qmp.execute("quit")
            await self.qmp.disconnect()
        except EOFError:
            pass        # QEMU may close the socket before its reply to quit
        assert self.proc.wait(timeout=20) == 0, self.stderr.read_text()


@pytest.fixture
def vms(ferry, tmp_path):
    """make("ferry" | "qemu", name, incoming=None): a VM of either VMM on the same guest, killed at the end."""
    made = []
    image = tmp_path / "guest.elf"

    def make(kind, name, incoming=None):
        if kind == "ferry":
            args = ["--cpus", "1", "--memory", MEMORY, "--workload", WORKLOAD]
            # QEMU's spelling of the option, which ferry accepts as well as --incoming.
            vm = VM(ferry, tmp_path, name, args + (["-incoming", incoming] if incoming else []))
        else:
            if not image.exists():
                subprocess.run([ferry, "guest", "export", "--output", str(image)], check=True)
            cmdline = subprocess.run([ferry, "guest", "cmdline", "--cpus", "1", "--workload", WORKLOAD],
                                     check=True, capture_output=True, text=True).stdout.strip()
            vm = QemuVM(image, cmdline, tmp_path, name, incoming)
        made.append(vm)
        return vm
    yield make
    for vm in made:
        vm.kill()


def guest_beats(serial):
    """(sequence, guest ms, err) of every heartbeat; QEMU's console may put escape codes before the first."""
    return [(int(s), int(t), int(e)) for s, t, e in HEARTBEAT.findall(serial.read_text())]


async def refused(client, command, arguments):
    with pytest.raises(ExecuteError) as caught:
        await client.execute(command, arguments)
    assert caught.value.error_class == "GenericError", caught.value
    return str(caught.value)


async def multifd_recipe(src, dst):
    """QEMU's multifd recipe, command for command; returns the source's final query-migrate."""
    for client in (src, dst):
        await client.execute("migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
        await client.execute("migrate-set-parameters", {"multifd-channels": CHANNELS})
        caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
        assert caps["multifd"] is True
        assert (await client.execute("query-migrate-parameters"))["multifd-channels"] == CHANNELS
    await src.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
    await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
    listening = await dst.execute("query-migrate")
    port = int(listening["socket-address"][0]["port"])
    assert port > 0
    await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
    info = await wait_status(src, ("completed", "failed", "cancelled"))
    assert info["status"] == "completed", info
    return info


async def wait_guest_ready(vm, count=10):
    """The source guest has beaten `count` times (its working set is written by then)."""
    deadline = time.monotonic() + 30
    while len(guest_beats(vm.serial)) < count:
        assert vm.proc.poll() is None and time.monotonic() < deadline, vm.stderr.read_text()
        await asyncio.sleep(0.05)


async def assert_guest_moved(source, destination):
    """The guest left the source in postmigrate and beats on at the destination, in sequence, with no verify error."""
    assert (await source.qmp.execute("query-status"))["status"] == "postmigrate"
    assert (await destination.qmp.execute("query-status"))["status"] == "running"
    deadline = time.monotonic() + 10
    while len(guest_beats(destination.serial)) < 5:
        assert time.monotonic() < deadline, destination.serial.read_text()[-2000:]
        await asyncio.sleep(0.1)
    numbers = [n for n, _ in assert_beats_continue(source.serial, destination.serial)[1]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert all(err == 0 for *_, err in guest_beats(source.serial) + guest_beats(destination.serial)), "the guest's own verifier saw no error"


def test_ferry_multifd_four_channels_qemu_recipe(vms):
    source = vms("ferry", "src")
    destination = vms("ferry", "dst", incoming="defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"
        caps = {c["capability"]: c["state"] for c in await src.qmp.execute("query-migrate-capabilities")}
        assert caps["multifd"] is False and caps["zero-copy-send"] is False
        params = await src.qmp.execute("query-migrate-parameters")
        assert params["multifd-channels"] == 2 and params["multifd-compression"] == "none"
        assert params["multifd-zstd-level"] == 1 and params["zero-page-detection"] == "multifd"
        await wait_guest_ready(source)

        info = await multifd_recipe(src.qmp, dst.qmp)
        ram = info["ram"]
        assert ram["multifd-bytes"] > 0 and ram["total"] == 256 << 20 and ram["remaining"] == 0
        assert ram["normal"] > 0 and ram["transferred"] >= ram["multifd-bytes"]
        channels = info["x-ferry-channels"]
        multifd = [c for c in channels if c["role"] == "multifd"]
        assert [c["role"] for c in channels].count("main") == 1, channels
        assert sorted(c["index"] for c in multifd) == list(range(CHANNELS)), channels
        for channel in multifd:
            assert channel["bytes"] > 0 and channel["frames"] > 0, channel
            assert {"normal", "duplicate"} <= channel.keys(), channel
        assert sum(c["bytes"] for c in multifd) == ram["multifd-bytes"], (channels, ram)
        # Every page went over the multifd channels, none over the main one.
        assert sum(c["normal"] for c in multifd) == ram["normal"], (channels, ram)
        assert sum(c["duplicate"] for c in multifd) == ram["duplicate"], (channels, ram)
        assert (await dst.qmp.execute("query-migrate"))["status"] == "completed"

        await assert_guest_moved(source, destination)
        await src.quit()
        assert_verified_clean(await dst.quit())

    asyncio.run(scenario())


@needs_qemu
def test_qemu_runs_the_same_multifd_recipe(vms):
    """The identical commands against two QEMU 10 processes: the recipe is QEMU's."""
    source = vms("qemu", "src")
    destination = vms("qemu", "dst", incoming="defer")

    async def scenario():
        src, dst = await source.connect(), await destination.connect()
        assert (await dst.qmp.execute("query-status"))["status"] == "inmigrate"
        await wait_guest_ready(source)
        info = await multifd_recipe(src.qmp, dst.qmp)
        assert info["ram"]["multifd-bytes"] > 0, info
        await assert_guest_moved(source, destination)
        await src.quit()
        await dst.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_multifd_after_migrate_incoming_is_refused_with_qemus_text(vms, kind):
    destination = vms(kind, "dst", incoming="defer")

    async def scenario():
        dst = (await destination.connect()).qmp
        await dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        message = await refused(dst, "migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
        assert "Multifd must be set before incoming starts" in message, message
        caps = {c["capability"]: c["state"] for c in await dst.execute("query-migrate-capabilities")}
        assert caps["multifd"] is False
        await dst.disconnect()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_zero_copy_with_zstd_is_refused_both_ways(vms, kind):
    vm = vms(kind, "vm")
    text = "Zero copy only available for non-compressed non-TLS multifd migration"
    zero_copy = {"capabilities": [{"capability": "multifd", "state": True}, {"capability": "zero-copy-send", "state": True}]}

    async def scenario():
        client = (await vm.connect()).qmp
        # zstd first, then the capability ...
        await client.execute("migrate-set-parameters", {"multifd-compression": "zstd"})
        assert text in await refused(client, "migrate-set-capabilities", zero_copy)
        caps = {c["capability"]: c["state"] for c in await client.execute("query-migrate-capabilities")}
        assert caps["zero-copy-send"] is False
        # ... or the capability first, then zstd.
        await client.execute("migrate-set-parameters", {"multifd-compression": "none"})
        await client.execute("migrate-set-capabilities", zero_copy)
        assert text in await refused(client, "migrate-set-parameters", {"multifd-compression": "zstd"})
        assert (await client.execute("query-migrate-parameters"))["multifd-compression"] == "none"
        assert (await client.execute("query-status"))["status"] == "running"
        await vm.quit()

    asyncio.run(scenario())


def test_ferry_refuses_bad_multifd_parameters(vms):
    vm = vms("ferry", "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        cases = [
            ({"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
            ({"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
            ({"multifd-compression": "zlib"}, "multifd-compression 'zlib' is not supported by Ferry (it has none and zstd)"),
            ({"multifd-compression": "lz4"}, "Parameter 'multifd-compression' does not accept value 'lz4'"),
            ({"multifd-zstd-level": 21}, "Parameter 'multifd_zstd_level' expects a value between 0 and 20"),
            ({"zero-page-detection": "smart"}, "Parameter 'zero-page-detection' does not accept value 'smart'"),
            ({"multifd-channels": "four"}, "Parameter 'multifd-channels' expects uint64"),
        ]
        for arguments, message in cases:
            assert message in await refused(client, "migrate-set-parameters", arguments), arguments
        params = await client.execute("query-migrate-parameters")
        assert params["multifd-channels"] == 2 and params["multifd-compression"] == "none"
        assert params["multifd-zstd-level"] == 1 and params["zero-page-detection"] == "multifd"
        await vm.quit()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_integer_parameters_read_as_qemu_reads_them(vms, kind):
    """migrate-set-parameters' integers as QEMU's input visitor reads them, in QEMU's words on both VMMs: the
    bandwidths take any uint64 (a negative number as its two's complement), the uint8 ones refuse what does not
    fit before their range is checked, and a value that is not an integer is refused as not a uint64."""
    vm = vms(kind, "vm")

    async def scenario():
        client = (await vm.connect()).qmp
        for name in ("max-bandwidth", "max-postcopy-bandwidth", "avail-switchover-bandwidth"):
            for value, back in ((2**64 - 1, 2**64 - 1), (2**63, 2**63), (-5, 2**64 - 5), (1 << 20, 1 << 20)):
                await client.execute("migrate-set-parameters", {name: value})
                assert (await client.execute("query-migrate-parameters"))[name] == back, (name, value)
        cases = [({"max-bandwidth": 2**64}, "Parameter 'max-bandwidth' expects uint64"),
                 ({"max-bandwidth": 1.5}, "Parameter 'max-bandwidth' expects uint64"),
                 ({"max-bandwidth": None}, "Parameter 'max-bandwidth' expects uint64"),
                 ({"max-bandwidth": True}, "Parameter 'max-bandwidth' expects uint64"),
                 ({"downtime-limit": "soon"}, "Parameter 'downtime-limit' expects uint64"),
                 ({"downtime-limit": -5}, "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
                 ({"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
                 ({"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
                 ({"cpu-throttle-initial": 100}, "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
                 ({"cpu-throttle-initial": -5}, "Parameter 'cpu-throttle-initial' expects uint8_t"),
                 ({"cpu-throttle-increment": 100}, "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
                 ({"throttle-trigger-threshold": 101}, "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
                 ({"max-cpu-throttle": 100}, "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
                 ({"multifd-zstd-level": 256}, "Parameter 'multifd-zstd-level' expects uint8_t"),
                 ({"multifd-zstd-level": 21}, "Parameter 'multifd_zstd_level' expects a value between 0 and 20")]
        for arguments, message in cases:
            assert await refused(client, "migrate-set-parameters", arguments) == message, arguments
        params = await client.execute("query-migrate-parameters")
        assert params["downtime-limit"] == 300 and params["multifd-channels"] == 2 and params["cpu-throttle-initial"] == 20
        await vm.quit()

    asyncio.run(scenario())
