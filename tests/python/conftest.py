"""Shared fixtures: the ferry binary and a running VM with a QMP socket."""
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FERRY = Path(os.environ.get("FERRY", ROOT / ".build" / "debug" / "ferry"))


@pytest.fixture(scope="session")
def ferry():
    assert FERRY.exists(), f"build ferry first ({FERRY})"
    return str(FERRY)


@pytest.fixture
def running_vm(ferry, tmp_path):
    """A ferry process with the embedded guest dirtying memory and a QMP socket."""
    sock = tmp_path / "qmp.sock"
    serial = tmp_path / "serial.log"
    proc = subprocess.Popen(
        [ferry, "run", "--cpus", "2", "--memory", "256M", "--workload", "dirty-rate=16M,working-set=32M",
         "--serial", f"file:{serial}", "--qmp", f"unix:{sock}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "QMP socket never appeared"
        time.sleep(0.02)
    yield proc, sock, serial
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def assert_verified_clean(stderr):
    """`--verify-on-exit` found no corrupt page and the guest reported no verify failure."""
    import re
    match = re.search(r"ferry: verify: (\d+) pages checked, (\d+) written by the guest, (\d+) failed.*"
                      r"guest-reported verify failures: (\d+)", stderr)
    assert match, stderr
    assert int(match[2]) > 0 and match[3] == "0" and match[4] == "0", stderr


HEARTBEAT = re.compile(r"HB (\d+) t=(\d+) pages=\d+ err=(\d+)")


def last_heartbeat_errors(text):
    """The guest verifier's error count in its last heartbeat (the log's last line may be
    another report, such as the slow-access histogram)."""
    beats = HEARTBEAT.findall(text)
    assert beats, text[-300:]
    return int(beats[-1][2])


def assert_beats_continue(source_serial, destination_serial):
    """The guest's heartbeats go on at the destination where the source's stopped, none lost or
    repeated; returns (sequence, guest ms) of the source's beats and of the destination's.  The
    stop may cut a beat's line in two (its head in the source's log, its tail in the
    destination's): read as one text, that line counts once, as the destination's first."""
    source, destination = source_serial.read_text(), destination_serial.read_text()
    before = [(int(n), int(t)) for n, t, _ in HEARTBEAT.findall(source)]
    after = [(int(n), int(t)) for n, t, _ in HEARTBEAT.findall(source + destination)][len(before):]
    context = f"the source's log ends {source[-200:]!r}, the destination's begins {destination[:200]!r}"
    assert before and after, context
    assert after[0][0] == before[-1][0] + 1, context
    return before, after
