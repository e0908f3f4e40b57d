"""Drives Ferry with the qemu.qmp library exactly as one drives QEMU."""
import asyncio
import re

from qemu.qmp import QMPClient, ExecuteError


def heartbeats(serial):
    return [int(m) for m in re.findall(r"^HB (\d+) ", serial.read_text(), re.M)]


async def wait_for_event(client, name, timeout=5):
    async def find():
        async for event in client.events:
            if event["event"] == name:
                return event
    return await asyncio.wait_for(find(), timeout)


def test_qemu_qmp_client_drives_ferry(running_vm):
    proc, sock, serial = running_vm

    async def scenario():
        client = QMPClient("ferry-test")
        await client.connect(str(sock))
        assert client.greeting.QMP.version["qemu"]["major"] == 10

        status = await client.execute("query-status")
        assert status == {"status": "running", "running": True, "singlestep": False}
        cpus = await client.execute("query-cpus-fast")
        assert [c["cpu-index"] for c in cpus] == [0, 1]
        assert all(c["thread-id"] > 0 for c in cpus)

        await asyncio.sleep(0.5)
        await client.execute("stop")
        stop = await wait_for_event(client, "STOP")
        assert stop["timestamp"]["seconds"] > 0
        assert (await client.execute("query-status"))["status"] == "paused"
        frozen = heartbeats(serial)
        await asyncio.sleep(0.5)
        assert heartbeats(serial) == frozen, "heartbeats continued while stopped"

        await client.execute("cont")
        await wait_for_event(client, "RESUME")
        await asyncio.sleep(0.5)
        resumed = heartbeats(serial)
        assert len(resumed) > len(frozen) and resumed == list(range(1, len(resumed) + 1))

        try:
            await client.execute("no-such-command")
            raise AssertionError("unknown command accepted")
        except ExecuteError as error:
            assert error.error_class == "CommandNotFound"

        await client.execute("quit")
        await wait_for_event(client, "SHUTDOWN")
        try:
            await client.disconnect()
        except EOFError:
            pass    # Ferry (like QEMU) may close the socket after quit before the client's own disconnect

    asyncio.run(scenario())
    assert proc.wait(timeout=10) == 0
    assert re.search(r"^HB \d+ t=\d+ pages=\d+ err=0$", serial.read_text(), re.M)
    assert " err=" in serial.read_text() and not re.search(r"err=[1-9]", serial.read_text())


def test_clients_connect_one_after_another_and_garbage_is_answered(running_vm):
    proc, sock, _ = running_vm

    async def garbage():
        reader, writer = await asyncio.open_unix_connection(str(sock))
        await reader.readline()                                 # greeting
        writer.write(b'{"execute":"qmp_capabilities"}\n')
        assert b'"return"' in await reader.readline()
        writer.write(b"this is not json\n")
        assert b"GenericError" in await reader.readline()
        writer.write(b'{"execute": 42}\n')
        assert b"GenericError" in await reader.readline()
        writer.close()

    async def second_client():
        client = QMPClient("second")
        await client.connect(str(sock))
        assert (await client.execute("query-status"))["running"] is True
        await client.disconnect()

    asyncio.run(garbage())
    asyncio.run(second_client())
    asyncio.run(second_client())
    assert proc.poll() is None, "ferry died after a client sent garbage"
