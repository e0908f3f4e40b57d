"""Free page hints and the balloon, driven with qemu.qmp exactly as one drives QEMU, and
the embedded guest's own virtio-balloon driver proven against QEMU 10's device.

The guest (`--workload ...,free=SIZE`) touches its working set once and gives the last SIZE
of it back to its page allocator; its driver reports free memory during a migration.  The
same exported guest runs under QEMU 10 microvm (acpi=off, so microvm puts
`virtio_mmio.device=` on the command line) with QEMU's own virtio-balloon-device: QEMU's
device must accept the driver, inflate and deflate on `balloon`, and send far fewer pages
with hints than without.  Then Ferry's device does the same for the same driver."""
import asyncio
import re
import shutil
import subprocess

import pytest
from qemu.qmp import ExecuteError

from conftest import assert_verified_clean
from qemu_microvm import QBOOT, QEMU_CPU
from test_migration import VM, wait_status
from test_multifd import QemuVM as MultifdQemuVM

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="QEMU 10 not installed (scripts/install-qemu.sh)")

MEMORY_MB = 512
WORKLOAD = "dirty-rate=0,working-set=256M,free=192M"
IN_USE = 64 << 20
FREED = 192 << 20


class QemuVM(MultifdQemuVM):
    """QEMU 10 microvm on the exported guest with QEMU's virtio-balloon-device (hints need an iothread)."""

    def __init__(self, image, cmdline, tmp_path, name, hints=True, balloon=True, incoming=None):
        def command(sock, serial):
            argv = [QEMU, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", QEMU_CPU, "-smp", "1",
                    "-m", f"{MEMORY_MB}M", "-object", f"memory-backend-ram,id=ram,size={MEMORY_MB}M,prealloc=on",
                    "-machine", "memory-backend=ram",
                    "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-bios", QBOOT,
                    "-kernel", str(image), "-append", cmdline, "-qmp", f"unix:{sock},server=on,wait=off"]
            if balloon:
                argv += ["-global", "virtio-mmio.force-legacy=false", "-object", "iothread,id=io0",
                         "-device", f"virtio-balloon-device,free-page-hint={'on' if hints else 'off'},iothread=io0"]
            return argv + (["-incoming", incoming] if incoming else []), open(serial, "w")
        self.launch(tmp_path, name, command)


@pytest.fixture
def vms(ferry, tmp_path):
    """make(kind, name, hints=True, balloon=True, incoming=None) for kind "ferry" or "qemu"."""
    made = []
    image = tmp_path / "guest.elf"

    def make(kind, name, hints=True, balloon=True, incoming=None):
        if kind == "ferry":
            args = ["--cpus", "1", "--memory", f"{MEMORY_MB}M", "--mem-prealloc", "--workload", WORKLOAD]
            if balloon:
                # QEMU's spelling of the option, which ferry accepts as well as --device.
                args += ["-device", f"virtio-balloon,free-page-hint={'on' if hints else 'off'}"]
            vm = VM(ferry, tmp_path, name, args + (["-incoming", incoming] if incoming else []))
        else:
            if not image.exists():
                subprocess.run([ferry, "guest", "export", "--output", str(image)], check=True)
            cmdline = subprocess.run([ferry, "guest", "cmdline", "--cpus", "1", "--workload", WORKLOAD],
                                     check=True, capture_output=True, text=True).stdout.strip()
            vm = QemuVM(image, cmdline, tmp_path, name, hints, balloon, incoming)
        made.append(vm)
        return vm
    yield make
    for vm in made:
        vm.kill()


def serial_text(vm):
    # QEMU's console may put escape codes in; the lines searched for are plain.
    return vm.serial.read_bytes().decode(errors="replace")


async def wait_serial(vm, pattern, timeout=60):
    for _ in range(int(timeout * 20)):
        match = re.search(pattern, serial_text(vm))
        if match:
            return match
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {vm.serial.name}:\n{serial_text(vm)[-2000:]}")


async def balloon_change(client, timeout=10):
    async def first():
        async for event in client.events:
            if event["event"] == "BALLOON_CHANGE":
                return event["data"]["actual"]
    return await asyncio.wait_for(first(), timeout)


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_balloon_inflates_and_deflates_through_qmp(vms, kind):
    async def run():
        vm = await vms(kind, "vm", hints=False).connect()
        await wait_serial(vm, r"BL ready hint-queue=\d+ irq=\d+")
        ram = MEMORY_MB << 20
        assert await vm.qmp.execute("query-balloon") == {"actual": ram}
        # The guest gives 64 MiB (16 of its 4 MiB blocks) to the balloon, then takes it back.
        events = asyncio.ensure_future(balloon_change(vm.qmp))
        assert await vm.qmp.execute("balloon", {"value": ram - (64 << 20)}) == {}
        assert await events == ram - (64 << 20)
        await wait_serial(vm, r"BL actual=16384 target=16384")
        assert await vm.qmp.execute("query-balloon") == {"actual": ram - (64 << 20)}
        info = await vm.qmp.execute("human-monitor-command", {"command-line": "info balloon"})
        assert info.rstrip() == f"balloon: actual={MEMORY_MB - 64}"       # QEMU ends HMP lines with \r\n
        events = asyncio.ensure_future(balloon_change(vm.qmp))
        assert (await vm.qmp.execute("human-monitor-command", {"command-line": f"balloon {MEMORY_MB}"})).strip() == ""
        assert await events == ram
        await wait_serial(vm, r"BL actual=0 target=0")
        with pytest.raises(ExecuteError) as caught:
            await vm.qmp.execute("balloon", {"value": 0})
        assert (caught.value.error_class, str(caught.value)) == ("GenericError", "Parameter 'value' expects a size")
        await vm.quit()
        if kind == "ferry":
            assert_verified_clean(vm.stderr.read_text())
        assert re.findall(r"err=(\d+)", serial_text(vm))[-1] == "0"
    asyncio.run(run())


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_without_a_balloon_the_commands_say_so(vms, kind):
    async def run():
        vm = await vms(kind, "vm", balloon=False).connect()
        for command, arguments in (("balloon", {"value": 1 << 20}), ("query-balloon", None)):
            with pytest.raises(ExecuteError) as caught:
                await vm.qmp.execute(command, arguments)
            assert (caught.value.error_class, str(caught.value)) == ("DeviceNotActive", "No balloon device has been activated")
        await vm.quit()
    asyncio.run(run())


async def migrate(kind, vms, tmp_path, hints):
    """Idle guest, 192 of its 256 MiB freed: migrate it, return (transferred bytes, total ms, destination)."""
    uri = f"unix:{tmp_path}/{kind}-{hints}.sock"
    source = await vms(kind, f"src-{hints}", hints=hints).connect()
    destination = await vms(kind, f"dst-{hints}", hints=hints, incoming="defer").connect()
    await wait_serial(source, r"FREE pages=")
    await wait_serial(source, r"BL ready")
    await destination.qmp.execute("migrate-incoming", {"uri": uri})
    # A link the guest can outpace: its driver answers within a timer tick of each round (both VMMs).
    await source.qmp.execute("migrate-set-parameters", {"max-bandwidth": 256 << 20})
    await source.qmp.execute("migrate", {"uri": uri})
    info = await wait_status(source.qmp, ("completed",))
    await wait_status(destination.qmp, ("completed",))
    await asyncio.sleep(1.0)          # the destination guest runs on: beats, and takes its hinted blocks back
    text = serial_text(destination)
    await source.quit()
    await destination.quit()
    if kind == "ferry":
        assert_verified_clean(destination.stderr.read_text())
    assert re.findall(r"err=(\d+)", text)[-1] == "0", "the guest's verifier on the destination"
    return info["ram"]["transferred"], info["total-time"], text


@pytest.mark.parametrize("kind", ["ferry", pytest.param("qemu", marks=needs_qemu)])
def test_hints_keep_freed_memory_out_of_the_stream(vms, tmp_path, kind):
    """QEMU's device accepts the driver and sends far fewer bytes with hints; then Ferry's device, with the same driver."""
    async def run():
        without, _, _ = await migrate(kind, vms, tmp_path, hints=False)
        with_hints, _, destination_log = await migrate(kind, vms, tmp_path, hints=True)
        assert without >= IN_USE + FREED
        assert with_hints < without // 2, f"{with_hints >> 20} MiB sent with hints, {without >> 20} without"
        if kind == "ferry":
            # The bound for Ferry: the in-use memory (and the guest's image) plus a tenth of the freed.
            # QEMU's first pass can get further before the first hints arrive (94 MiB once here).
            assert with_hints <= IN_USE + (8 << 20) + FREED // 10, f"{with_hints >> 20} MiB sent with hints"
        assert "BL hints done returned=" in destination_log, "DONE reached the destination guest"
    asyncio.run(run())
