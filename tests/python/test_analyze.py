"""`ferry analyze` on files a real ferry saved: a plain stream file and a mapped-ram file."""
import asyncio
import json
import subprocess

import pytest
from qemu.qmp import QMPClient

from test_migration import VM, wait_status

MACHINE = ["--cpus", "2", "--memory", "128M", "--workload", "dirty-rate=8M,working-set=16M"]


def save(ferry, tmp_path, name, capabilities=()):
    """Runs a guest for a moment and saves it (live) to tmp_path/name with `capabilities` set."""
    state = tmp_path / name
    vm = VM(ferry, tmp_path, name.replace(".", "-"), MACHINE)

    async def scenario():
        await vm.qmp.connect(str(vm.sock))
        await asyncio.sleep(0.5)
        if capabilities:
            await vm.qmp.execute("migrate-set-capabilities",
                                 {"capabilities": [{"capability": c, "state": True} for c in capabilities]})
        await vm.qmp.execute("migrate-set-parameters", {"max-bandwidth": 4 << 30})
        await vm.qmp.execute("migrate", {"uri": f"file:{state}"})
        assert (await wait_status(vm.qmp, ("completed", "failed")))["status"] == "completed"
        await vm.quit()

    try:
        asyncio.run(scenario())
    finally:
        vm.kill()
    return state


def analyze(ferry, path, *args):
    return subprocess.run([ferry, "analyze", str(path), *args], capture_output=True, text=True, timeout=120)


SECTIONS = {"global", "platform", "cpu/0", "cpu/1", "serial"}


def test_analyze_a_stream_file(ferry, tmp_path):
    state = save(ferry, tmp_path, "vm.state")
    result = analyze(ferry, state, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"path", "offset", "kind", "file-bytes", "allocated-bytes", "stream", "mapped-ram", "status", "error"}
    assert report["kind"] == "stream" and report["status"] == "ok" and report["error"] is None
    assert report["mapped-ram"] is None and report["file-bytes"] == state.stat().st_size
    stream = report["stream"]
    assert stream["version"] == 3 and stream["channel"]["role"] == "main" and len(stream["channel"]["migration-id"]) == 32
    assert stream["configuration"] == {"vcpus": 2, "blocks": [{"name": "pc.ram", "bytes": 128 << 20, "page-size": 4096}]}
    assert stream["channel-plan"] == {"multifd": 0, "compression": "none", "mapped-ram": False}
    frames = stream["frames"]
    assert frames["configuration"] == 1 and frames["channels"] == 1 and frames["end"] == 1 and frames["pages"] > 0
    assert sum(frames.values()) == stream["frame-count"] == stream["end"]["frames"] + 1
    [pages] = stream["pages"]
    assert pages["block"] == "pc.ram" and pages["normal"] > 0 and pages["normal"] + pages["zero"] >= (128 << 20) // 4096
    assert {s["name"] for s in stream["sections"]} == SECTIONS
    assert all(s["version"] >= 1 and s["bytes"] > 0 for s in stream["sections"])
    assert stream["corrupt-frames"] == [] and stream["corrupt-pages"] == [] and stream["corrupt-page-count"] == 0
    assert stream["bytes"] == state.stat().st_size and stream["trailing-bytes"] == 0

    human = analyze(ferry, state)
    assert human.returncode == 0 and "Ferry migration stream" in human.stdout and "result: ok" in human.stdout

    # A copy cut in the middle: exit 1, one clear line saying where it ended.
    short = tmp_path / "short.state"
    short.write_bytes(state.read_bytes()[:state.stat().st_size // 2])
    cut = analyze(ferry, short, "--json")
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert json.loads(cut.stdout)["status"] == "error"
    assert "stream truncated: the stream ended after" in json.loads(cut.stdout)["error"]
    assert cut.stderr.startswith(f"ferry: error: {short}: stream truncated: the stream ended after"), cut.stderr


def test_analyze_a_mapped_ram_file(ferry, tmp_path):
    state = save(ferry, tmp_path, "vm.mapped", capabilities=("mapped-ram",))
    result = analyze(ferry, state, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "mapped-ram" and report["status"] == "ok" and report["stream"] is None
    file = report["mapped-ram"]
    assert file["version"] == 1 and file["complete"] is True and file["generation"] >= 1 and file["page-size"] == 4096
    assert file["ram-bytes"] == 128 << 20 and file["bounded"] is True and report["file-bytes"] <= file["layout-bytes"]
    assert report["allocated-bytes"] < report["file-bytes"], "zero pages are holes"
    [block] = file["blocks"]
    assert block["name"] == "pc.ram" and block["pages"] == (128 << 20) // 4096 and block["metadata-ok"] is True
    assert block["present"] > 0 and block["present"] + block["zero"] == block["pages"]
    assert block["checked-pages"] == block["present"] and block["corrupt-page-count"] == 0
    assert block["pages-offset"] % (1 << 20) == 0 and block["bitmap-offset"] >= 4096
    assert file["pages-checked"] is True and file["corrupt-pages"] == [] and file["corrupt-metadata"] == []
    state_stream = file["device-state"]
    assert state_stream["channel-plan"]["mapped-ram"] is True and "pages" not in state_stream["frames"]
    assert {s["name"] for s in state_stream["sections"]} == SECTIONS
    assert state_stream["bytes"] == file["state-length"]

    quick = json.loads(analyze(ferry, state, "--json", "--quick").stdout)
    assert quick["status"] == "ok" and quick["mapped-ram"]["pages-checked"] is False

    # Cut inside its device state: the header's regions no longer fit in the file.
    short = tmp_path / "short.mapped"
    short.write_bytes(state.read_bytes()[:report["file-bytes"] - 100])
    cut = analyze(ferry, short, "--json")
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "device state" in json.loads(cut.stdout)["error"] and "past the end of the file" in cut.stderr, cut.stderr

    # One byte of a present page flipped: exit 2 and that page listed.
    first = block["pages-offset"]
    data = bytearray(state.read_bytes())
    page = next(p for p in range(block["pages"]) if any(data[first + p * 4096:first + (p + 1) * 4096]))
    data[first + page * 4096 + 100] ^= 0x40
    bad = tmp_path / "bad.mapped"
    bad.write_bytes(bytes(data))
    corrupt = analyze(ferry, bad, "--json")
    assert corrupt.returncode == 2, corrupt.stdout + corrupt.stderr
    listed = json.loads(corrupt.stdout)["mapped-ram"]["corrupt-pages"]
    assert listed == [{"block": "pc.ram", "page": page, "file-offset": first + page * 4096}]


def test_analyze_refuses_what_is_not_a_migration_file(ferry, tmp_path):
    other = tmp_path / "other"
    other.write_bytes(b"QEVM\x00\x00\x00\x03" + bytes(100))
    result = analyze(ferry, other)
    assert result.returncode == 1
    assert "not a Ferry migration file (bad magic 'QEVM....'" in result.stderr, result.stderr
    missing = analyze(ferry, tmp_path / "missing")
    assert missing.returncode == 1 and "No such file or directory" in missing.stderr, missing.stderr
