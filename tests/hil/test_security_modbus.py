"""Modbus server safety over real loopback sockets: quality, hygiene, allow-list, audit.

The server runs straight over a PointStore (no asyncua address space): cheap to start, so each
test gets its own server with the policy it needs.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from hil.emulator.modbus_server import ModbusPolicy, ModbusServer
from hil.security.audit import AuditLog, read_audit
from hil.store import PointStore
from twin.pointmap import ModbusBinding, Point, PointMap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")
TIMEOUT = 5.0


def _pt(name, table, column, kind, mb, *, low=None, high=None):
    return Point(
        name=name,
        table=table,
        column=column,
        element=0,
        direction="to_field" if kind in ("command", "setpoint") else "to_twin",
        kind=kind,
        low=low,
        high=high,
        modbus=mb,
    )


def pointmap() -> PointMap:
    mb = ModbusBinding
    return PointMap(
        points=(
            _pt("Q45.closed", "switch", "closed", "status", mb(1, "discrete_input", 0, "bool")),
            _pt("Q45.cmd", "switch", "cmd", "command", mb(1, "coil", 0, "bool"), low=0, high=1),
            _pt("bus1.vm_pu", "bus", "vm_pu", "measurement", mb(1, "input_register", 0)),
            _pt(
                "pv1.p_mw",
                "sgen",
                "p_mw",
                "measurement",
                mb(1, "input_register", 2, "int16", scale=0.001, na_sentinel=32767),
            ),
            _pt(
                "pv1.p_set",
                "sgen",
                "max_p_mw",
                "setpoint",
                mb(1, "holding_register", 0),
                low=0,
                high=1,
            ),
        )
    )


class Served:
    def __init__(self, policy: ModbusPolicy | None = None) -> None:
        self.store = PointStore(pointmap())
        self.audit = AuditLog()
        self.server = ModbusServer(
            self.store, port=0, policy=policy or ModbusPolicy(), audit=self.audit
        )
        for name, v in (("Q45.closed", 1), ("Q45.cmd", 0), ("bus1.vm_pu", 1.01)):
            self.store.set(name, v)
        self.store.set("pv1.p_mw", 0.02)
        self.store.set("pv1.p_set", 0.5)

    async def __aenter__(self) -> Served:
        await self.server.start()  # port 0: a free port, kept in server.port
        self.port = self.server.port
        assert self.port != 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()

    async def client(self) -> AsyncModbusTcpClient:
        c = AsyncModbusTcpClient("127.0.0.1", port=self.port, timeout=TIMEOUT, retries=0)
        assert await c.connect()
        return c


async def _exc(resp) -> int:
    assert resp.isError(), f"expected an exception response, found {resp}"
    return resp.exception_code


def _f32(words):
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


# --- quality is never served as a good value ------------------------------------------------------
async def test_a_point_not_good_is_an_exception_or_its_sentinel():
    async with Served() as s:
        c = await s.client()
        try:
            assert (await c.read_discrete_inputs(0, count=1, device_id=1)).bits[0] is True
            # the probe: a breaker status marked invalid read 1 (closed) with quality good
            s.store.set("Q45.closed", math.nan)
            assert s.store.get("Q45.closed").quality is Quality.INVALID
            assert await _exc(await c.read_discrete_inputs(0, count=1, device_id=1)) == 0x04
            s.store.set("Q45.closed", 1, quality=Quality.COMMS_LOST)
            assert await _exc(await c.read_discrete_inputs(0, count=1, device_id=1)) == 0x0B
            s.store.set("bus1.vm_pu", 1.0, quality=Quality.STALE)
            assert await _exc(await c.read_input_registers(0, count=2, device_id=1)) == 0x0B
            s.store.set("bus1.vm_pu", math.nan)
            assert await _exc(await c.read_input_registers(0, count=2, device_id=1)) == 0x04
            # a map that names a sentinel: the sentinel, whatever the reason
            s.store.set("pv1.p_mw", 0.02, quality=Quality.COMMS_LOST)
            rr = await c.read_input_registers(2, count=1, device_id=1)
            assert rr.registers == [32767]
            s.store.set("pv1.p_mw", 0.02)
            assert (await c.read_input_registers(2, count=1, device_id=1)).registers == [20]
            # back to good: a value again
            s.store.set("bus1.vm_pu", 1.02)
            rr = await c.read_input_registers(0, count=2, device_id=1)
            assert _f32(rr.registers) == pytest.approx(1.02, rel=1e-6)
        finally:
            c.close()


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="Debian mbpoll not installed")
async def test_mbpoll_sees_the_exception_for_a_status_not_good():
    async with Served() as s:
        s.store.set("Q45.closed", 1, quality=Quality.COMMS_LOST)
        cmd = ["mbpoll", "-m", "tcp", "-p", str(s.port), "-a", "1", "-0", "-t", "1", "-r", "0",
               "-c", "1", "-1", "-o", "2", "127.0.0.1"]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode()
        assert proc.returncode != 0, text
        assert "Target device failed to respond" in text, text  # libmodbus' text for 0x0B
        s.store.set("Q45.closed", math.nan)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0 and "Slave device or server failure" in out.decode()
        s.store.set("Q45.closed", 0)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        assert "[0]: \t0" in out.decode() or "[0]:\t0" in out.decode(), out.decode()


# --- function codes we do not implement -------------------------------------------------------
async def _raw(port: int, frame: bytes, n: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(n), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "pdu",
    [
        bytes([17]),  # report server id: used to name the stack ("Pymodbus")
        bytes([24, 0, 0]),  # read FIFO queue: used to return made-up data
        bytes([8, 0, 0, 0x12, 0x34]),  # diagnostics
        bytes([43, 14, 1, 0]),  # read device identification
        bytes([7]),
    ],
)
async def test_unimplemented_function_codes_answer_01(pdu):
    async with Served() as s:
        mbap = b"\x00\x07\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + b"\x01"
        answer = await _raw(s.port, mbap + pdu, 9)
        assert answer[:2] == b"\x00\x07"
        assert answer[7:] == bytes([pdu[0] | 0x80, 0x01])
        assert b"Pymodbus" not in answer


# --- malformed frames close that connection, others keep being served ---------------------------
async def _closed(reader: asyncio.StreamReader) -> bool:
    """True when the server closed the connection (EOF) without answering."""
    data = await asyncio.wait_for(reader.read(100), TIMEOUT)
    return data == b""


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x01\x12\x34\x00\x06\x01\x04\x00\x00\x00\x02",  # protocol id 0x1234
        b"\x00\x01\x00\x00\x00\x03\x01\x04\x00\x00\x00\x02",  # MBAP length 3 for a 6-byte body
        b"\x00\x01\x00\x00\xff\xff\x01\x04",  # MBAP length 65535
        b"\x00\x01\x00\x00\x00\x01\x01",  # MBAP length 1: no function code
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # garbage
    ],
)
async def test_a_malformed_frame_closes_the_connection_only(frame):
    async with Served(ModbusPolicy(frame_timeout_s=0.5)) as s:
        good = await s.client()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(frame)
            await writer.drain()
            assert await _closed(reader)
            writer.close()
            await writer.wait_closed()
            assert s.server.stats["malformed_closed"] == 1
            rr = await good.read_input_registers(0, count=2, device_id=1)
            assert not rr.isError()
        finally:
            good.close()


async def test_a_frame_cut_short_is_closed_after_the_frame_timeout():
    async with Served(ModbusPolicy(frame_timeout_s=0.3)) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(b"\x00\x01\x00\x00\x00\x06\x01\x04")  # 4 bytes of the PDU missing
        await writer.drain()
        assert await _closed(reader)
        writer.close()
        await writer.wait_closed()
        assert s.server.stats["malformed_closed"] == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=1, max_size=300))
def test_random_bytes_never_hang_the_server(junk):
    async def run() -> None:
        async with Served(ModbusPolicy(frame_timeout_s=0.2)) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(junk)
            await writer.drain()
            # answered (an exception or data) or closed, within the frame timeout: never stuck
            await asyncio.wait_for(reader.read(600), TIMEOUT)
            writer.close()
            await writer.wait_closed()
            c = await s.client()
            try:
                assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
            finally:
                c.close()

    asyncio.run(run())


async def test_request_size_limits_answer_03():
    async with Served() as s:
        # read of 126 registers, 2001 bits; FC16 whose byte count does not match its count
        for pdu in (
            bytes([4, 0, 0, 0, 126]),
            bytes([2, 0, 0, 0x07, 0xD1]),
            bytes([16, 0, 0, 0, 2, 2, 0, 0]),
        ):
            mbap = b"\x00\x09\x00\x00" + (len(pdu) + 1).to_bytes(2, "big") + b"\x01"
            answer = await _raw(s.port, mbap + pdu, 9)
            assert answer[7:] == bytes([pdu[0] | 0x80, 0x03]), answer.hex()


# --- connection cap and idle timeout ---------------------------------------------------------
async def test_the_cap_drops_the_connection_idle_longest():
    async with Served(ModbusPolicy(max_connections=3)) as s:
        idle = []
        for _ in range(3):
            idle.append(await asyncio.open_connection("127.0.0.1", s.port))
            await asyncio.sleep(0.01)  # distinct accept order
        for _ in range(50):
            if s.server.connections == 3:
                break
            await asyncio.sleep(0.02)
        c = await s.client()  # the fourth: gets in, the oldest idle one is dropped
        try:
            assert not (await c.read_input_registers(0, count=2, device_id=1)).isError()
            assert await _closed(idle[0][0])
            assert s.server.stats["cap_dropped"] == 1
            assert s.server.connections <= 3
        finally:
            c.close()
            for _r, w in idle:
                w.close()


async def test_an_idle_connection_is_closed():
    async with Served(ModbusPolicy(idle_timeout_s=0.3)) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        assert await _closed(reader)
        writer.close()
        await writer.wait_closed()
        assert s.server.stats["idle_closed"] == 1


# --- who may write, and the audit of every attempt ---------------------------------------------
async def test_read_only_and_allow_list_answer_01_and_are_audited(tmp_path):
    async with Served(ModbusPolicy(read_only=True)) as s:
        c = await s.client()
        try:
            # the probe: one FC15 from any host opened every breaker, with no log line
            assert await _exc(await c.write_coils(0, [True], device_id=1)) == 0x01
            assert s.store.value("Q45.cmd") == 0.0
            assert not (await c.read_coils(0, count=1, device_id=1)).isError()
        finally:
            c.close()
        rec = s.audit.records()[-1]
        assert (rec.protocol, rec.result) == ("modbus", "refused")
        assert rec.peer.startswith("127.0.0.1:") and "read-only" in rec.reason
    async with Served(ModbusPolicy(allow=("10.1.2.0/24",))) as s:
        c = await s.client()
        try:
            assert await _exc(await c.write_coil(0, True, device_id=1)) == 0x01
        finally:
            c.close()
        assert "not on the write allow-list" in s.audit.records()[-1].reason


async def test_every_write_attempt_is_audited_with_its_peer(tmp_path):
    async with Served() as s:
        path = s.audit.stream_to(tmp_path / "audit.jsonl")
        c = await s.client()
        try:
            words = list(struct.unpack(">HH", struct.pack(">f", 0.75)))
            assert not (await c.write_registers(0, words, device_id=1)).isError()
            assert await _exc(await c.write_registers(10, words, device_id=1)) == 2  # unmapped
            bad = list(struct.unpack(">HH", struct.pack(">f", 5.0)))
            assert await _exc(await c.write_registers(0, bad, device_id=1)) == 3  # > high
            assert not (await c.write_coil(0, True, device_id=1)).isError()
        finally:
            c.close()
        s.audit.close()
    recs = read_audit(path)
    assert [r["result"] for r in recs] == ["accepted", "refused", "refused", "accepted"]
    first = recs[0]
    assert first["point"] == "pv1.p_set" and first["old"] == 0.5
    assert first["new"] == pytest.approx(0.75) and first["role"] == "operator"
    assert all(r["peer"].startswith("127.0.0.1:") and r["protocol"] == "modbus" for r in recs)
    assert "unmapped" in recs[1]["reason"] and "5" in recs[2]["reason"]
    assert recs[3]["point"] == "Q45.cmd" and recs[3]["new"] == 1.0


async def test_the_twin_link_keeps_good_points_of_a_block_with_one_not_served():
    """The twin's Modbus link reads a failed block point by point: 04 -> INVALID, 0B ->
    COMMS_LOST, the others GOOD (not one INVALID point taking its neighbours down)."""
    from hil.links.modbus import ModbusLink

    async with Served() as s:
        inputs = [p for p in s.store.pointmap.points if p.kind in ("measurement", "status")]
        async with ModbusLink("127.0.0.1", s.port, inputs, timeout_s=2.0) as lk:
            s.store.set("bus1.vm_pu", math.nan)
            s.store.set("Q45.closed", 1, quality=Quality.COMMS_LOST)
            await lk.poll()
            got = lk.read_inputs()
            assert got["bus1.vm_pu"].quality is Quality.INVALID
            assert got["Q45.closed"].quality is Quality.COMMS_LOST
            assert got["pv1.p_mw"].quality is Quality.GOOD
            assert got["pv1.p_mw"].value == pytest.approx(0.02)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fc=st.sampled_from([1, 2, 3, 4]),
    unit=st.sampled_from([0, 1, 2, 255]),
    address=st.integers(0, 0xFFFF),
    count=st.integers(0, 0xFFFF),
)
def test_well_formed_reads_are_always_answered(fc, unit, address, count):
    """Any well-formed read gets an answer on the same connection: data, or 02/03/04/0B."""

    async def run() -> None:
        async with Served() as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            try:
                pdu = bytes([fc]) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
                writer.write(b"\x00\x2a\x00\x00\x00\x06" + bytes([unit]) + pdu)
                await writer.drain()
                head = await asyncio.wait_for(reader.readexactly(7), TIMEOUT)
                assert head[:4] == b"\x00\x2a\x00\x00" and head[6] == unit
                body = await asyncio.wait_for(
                    reader.readexactly(int.from_bytes(head[4:6], "big") - 1), TIMEOUT
                )
                if body[0] & 0x80:
                    assert body[0] == fc | 0x80 and body[1] in (2, 3, 4, 0x0B), body.hex()
                else:
                    assert body[0] == fc and unit == 1
            finally:
                writer.close()
                await writer.wait_closed()

    asyncio.run(run())


def test_audit_log_buffers_until_a_file_and_keeps_refused_records(tmp_path):
    log = AuditLog(max_buffer=3)
    for i in range(5):
        log.record(protocol="modbus", peer="p", user="", point=f"a{i}", old=0.0, new=1.0,
                   result="accepted")  # fmt: skip
    log.record(protocol="modbus", peer="p", user="", point="r", old=0.0, new=math.nan,
               result="refused", reason="why")  # fmt: skip
    kept = log.records()
    assert len(kept) <= 3 and kept[-1].point == "r" and log.dropped >= 3
    path = log.stream_to(tmp_path / "a" / "audit.jsonl")
    log.record(protocol="opcua", peer="q", user="u", point="b", old=None, new=math.inf,
               result="accepted")  # fmt: skip
    log.close()
    recs = read_audit(path)
    assert [r["point"] for r in recs][-2:] == ["r", "b"]
    assert recs[-2]["new"] == "nan" and recs[-1]["new"] == "inf" and recs[-1]["old"] is None
    assert log.counts == {"accepted": 6, "refused": 1}
