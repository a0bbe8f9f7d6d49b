"""ModbusLink against a real pymodbus server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import math
import re
import struct

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.errors import CommsLost, HilTimeout, OutOfRange, ProtocolError, WriteRejected
from hil.links.modbus import MAX_BITS, MAX_REGISTERS, ModbusLink, coalesce
from twin.pointmap import ModbusBinding, Point
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")

WAIT = 10.0  # upper bound for any wait on the network (never reached when things work)


def _pt(name, table, addr, dtype="float32", *, unit=1, direction="to_twin", kind="status", **kw):
    return Point(
        name=name,
        table="x",
        column=name.split(".")[-1],
        element=name.split(".")[0],
        direction=direction,
        kind=kind,
        modbus=ModbusBinding(unit=unit, table=table, address=addr, dtype=dtype, **kw.pop("mb", {})),
        **kw,
    )


POINTS = (
    _pt("Q1.closed", "discrete_input", 0, "bool"),
    _pt("Q2.closed", "discrete_input", 1, "bool"),
    _pt("L1.p_mw", "input_register", 0, kind="measurement"),
    _pt("L1.q_mvar", "input_register", 2, kind="measurement"),
    _pt("T1.tap_pos", "input_register", 4, "int16", mb={"na_sentinel": 0x7FFF}),
    _pt("Q1.operations", "input_register", 5, "uint16", kind="measurement"),
    _pt("L2.p_mw", "input_register", 10, kind="measurement"),  # gap: its own block
    _pt("G2.p_mw", "input_register", 0, unit=2, kind="measurement"),  # other unit
    _pt("Q1.cmd", "coil", 0, "bool", direction="to_field", kind="command", low=0, high=1),
    _pt("Q2.cmd", "coil", 1, "bool", direction="to_field", kind="command", low=0, high=1),
    _pt("T1.avr_vset_pu", "holding_register", 0, direction="to_field", kind="setpoint",
        low=0.9, high=1.1, deadband=0.001),
    _pt("T1.avr_auto", "holding_register", 2, "uint16", direction="to_field", kind="setpoint",
        low=0, high=1),
    # to_field but in a read-only Modbus table: the map allows it, Modbus cannot write it
    _pt("L1.loading_percent", "input_register", 6, direction="to_field", kind="measurement"),
)  # fmt: skip


def _f32(v: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", v)))


def _regs_f32(regs: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">2H", *regs))[0]


def _device(unit: int) -> SimDevice:
    return SimDevice(
        id=unit,
        simdata=(
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # coils
            [SimData(0, count=16, values=False, datatype=DataType.BITS)],  # discrete inputs
            [SimData(0, count=20, values=0, datatype=DataType.REGISTERS)],  # holding
            [SimData(0, count=20, values=0, datatype=DataType.REGISTERS)],  # input
        ),
    )


class Plc:
    """A plain pymodbus server (units 1 and 2) that counts the requests it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[int, int, int, int]] = []  # (unit, fc, address, count)
        self.server: ModbusTcpServer | None = None

    def _trace(self, sending: bool, pdu):
        if not sending:
            self.requests.append(
                (pdu.dev_id, pdu.function_code, pdu.address, getattr(pdu, "count", 0))
            )
        return pdu

    async def start(self) -> None:
        self.server = ModbusTcpServer(
            [_device(1), _device(2)], address=("127.0.0.1", self.port), trace_pdu=self._trace
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    async def set(self, unit: int, fc: int, address: int, values) -> None:
        assert self.server is not None
        assert await self.server.context.async_setValues(unit, fc, address, values) is None

    async def get(self, unit: int, fc: int, address: int, count: int):
        assert self.server is not None
        return await self.server.context.async_getValues(unit, fc, address, count)


@pytest.fixture
async def plc(free_port):
    p = Plc(free_port)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def link(plc):
    lk = ModbusLink(
        "127.0.0.1", plc.port, POINTS, timeout_s=0.5, backoff_min_s=0.05, backoff_max_s=0.4
    )
    await lk.connect()
    yield lk
    await lk.close()


async def _fill(plc: Plc) -> None:
    await plc.set(1, 2, 0, [True, False])
    await plc.set(1, 4, 0, _f32(12.5) + _f32(-3.25) + [0xFFFE, 42])  # tap -2, 42 operations
    await plc.set(1, 4, 10, _f32(7.0))
    await plc.set(2, 4, 0, _f32(1.5))


async def _until(cond, timeout: float = WAIT) -> None:
    """Wait (bounded) until cond() is true; fails the test on timeout."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


# --- pure coalescing -----------------------------------------------------------------------
def test_coalesce_merges_neighbours_per_unit_and_table():
    blocks = coalesce(POINTS)
    spans = [(b.unit, b.table, b.address, b.count, len(b.points)) for b in blocks]
    assert (1, "discrete_input", 0, 2, 2) in spans
    assert (1, "input_register", 0, 8, 5) in spans  # 0..7 incl. the to_field point at 6
    assert (1, "input_register", 10, 2, 1) in spans
    assert (2, "input_register", 0, 2, 1) in spans
    # a gap allowance merges the far point
    merged = coalesce([p for p in POINTS if p.modbus.unit == 1], max_gap=2)
    assert any(b.address == 0 and b.count == 12 for b in merged)


def test_coalesce_respects_request_limits():
    regs = [_pt(f"m{i}.p", "input_register", 2 * i) for i in range(100)]  # 200 registers
    blocks = coalesce(regs)
    assert [b.count for b in blocks] == [124, 76]
    assert all(b.count <= MAX_REGISTERS for b in blocks)
    bits = [_pt(f"s{i}.closed", "discrete_input", i, "bool") for i in range(2100)]
    assert [b.count for b in coalesce(bits)] == [MAX_BITS, 100]


# --- reads ---------------------------------------------------------------------------------
async def test_poll_reads_every_kind_in_coalesced_blocks(plc, link):
    await _fill(plc)
    plc.requests.clear()
    await link.poll()
    reads = [r for r in plc.requests if r[1] in (1, 2, 3, 4)]
    assert len(reads) == len(link.blocks) == 4, plc.requests
    s = link.read_inputs()
    assert set(s) == {p.name for p in POINTS if p.direction == "to_twin"}
    assert s["Q1.closed"].value == 1.0 and s["Q2.closed"].value == 0.0
    assert s["L1.p_mw"].value == pytest.approx(12.5)
    assert s["L1.q_mvar"].value == pytest.approx(-3.25)
    assert s["T1.tap_pos"].value == -2.0
    assert s["Q1.operations"].value == 42.0
    assert s["L2.p_mw"].value == pytest.approx(7.0)
    assert s["G2.p_mw"].value == pytest.approx(1.5)
    assert all(x.quality is Quality.GOOD for x in s.values()), s
    assert link.stats["reads"] == 4 and link.stats["errors"] == 0


async def test_sentinel_and_nan_are_invalid(plc, link):
    await _fill(plc)
    await plc.set(1, 4, 4, [0x7FFF])
    await plc.set(1, 4, 0, _f32(math.nan))
    await link.poll()
    s = link.read_inputs()
    assert s["T1.tap_pos"].quality is Quality.INVALID
    assert s["L1.p_mw"].quality is Quality.INVALID
    assert s["L1.q_mvar"].quality is Quality.GOOD


async def test_repeated_polls_follow_changes_and_keep_qualities(plc, link):
    """Unchanged blocks are not decoded again: values, qualities and fresh timestamps still
    come out as if they were, and a change (or a change back) shows at once."""
    await _fill(plc)
    await plc.set(1, 4, 4, [0x7FFF])  # tap sentinel: INVALID
    await link.poll()
    first = link.read_inputs()
    await asyncio.sleep(0.01)
    await link.poll()
    again = link.read_inputs()
    for name, s in first.items():
        assert (again[name].value == s.value or math.isnan(s.value)) and (
            again[name].quality is s.quality
        ), name
        assert again[name].timestamp > s.timestamp, name
    assert again["T1.tap_pos"].quality is Quality.INVALID
    await plc.set(1, 4, 2, _f32(4.0))
    await plc.set(1, 2, 1, [True])
    await link.poll()
    s = link.read_inputs()
    assert s["L1.q_mvar"].value == pytest.approx(4.0) and s["Q2.closed"].value == 1.0
    assert s["L1.p_mw"].value == pytest.approx(12.5)
    await plc.set(1, 4, 2, _f32(-3.25))
    await plc.set(1, 4, 4, [3])
    await link.poll()
    s = link.read_inputs()
    assert s["L1.q_mvar"].value == pytest.approx(-3.25)
    assert s["T1.tap_pos"].value == 3.0 and s["T1.tap_pos"].quality is Quality.GOOD


async def test_staleness_after_interval(plc, free_port):
    fast = [
        _pt("L1.p_mw", "input_register", 0, kind="measurement", interval_s=0.05),
    ]
    async with ModbusLink("127.0.0.1", plc.port, fast, stale_factor=3.0) as lk:
        # before the first poll there is no value at all
        assert lk.read_inputs()["L1.p_mw"].quality is Quality.STALE
        await plc.set(1, 4, 0, _f32(2.0))
        await lk.poll()
        t = lk.read_inputs()["L1.p_mw"].timestamp
        assert lk.read_inputs(now=t + 0.1)["L1.p_mw"].quality is Quality.GOOD
        assert lk.read_inputs(now=t + 0.2)["L1.p_mw"].quality is Quality.STALE
        # and on the real clock: it goes stale by itself when nobody polls
        await _until(lambda: lk.read_inputs()["L1.p_mw"].quality is Quality.STALE, 5.0)
        await lk.poll()
        assert lk.read_inputs()["L1.p_mw"].quality is Quality.GOOD


async def test_exception_code_names_point_and_code(plc):
    bad = [
        _pt("L1.p_mw", "input_register", 0, kind="measurement"),
        _pt("X9.p_mw", "input_register", 30, kind="measurement"),  # beyond the server's map
    ]
    async with ModbusLink("127.0.0.1", plc.port, bad, timeout_s=0.5) as lk:
        await plc.set(1, 4, 0, _f32(4.0))
        with pytest.raises(ProtocolError) as ei:
            await lk.poll()
        assert ei.value.point == "X9.p_mw" and ei.value.code == 2
        assert "X9.p_mw" in str(ei.value) and "0x02" in str(ei.value)
        s = lk.read_inputs()
        assert s["X9.p_mw"].quality is Quality.INVALID
        assert s["L1.p_mw"].quality is Quality.GOOD  # the other block still refreshed
        assert lk.connected and lk.stats["errors"] == 1


# --- writes --------------------------------------------------------------------------------
async def test_write_outputs_coalesced(plc, link):
    plc.requests.clear()
    await link.write_outputs({"Q1.cmd": 1, "Q2.cmd": 1, "T1.avr_vset_pu": 1.02, "T1.avr_auto": 1})
    writes = [r for r in plc.requests if r[1] in (5, 6, 15, 16)]
    assert sorted(r[1] for r in writes) == [15, 16], writes  # one per table
    assert await plc.get(1, 1, 0, 2) == [True, True]
    hr = await plc.get(1, 3, 0, 3)
    assert _regs_f32(hr[:2]) == pytest.approx(1.02) and hr[2] == 1
    # inside the deadband and just written: nothing sent
    plc.requests.clear()
    await link.write_outputs({"T1.avr_vset_pu": 1.0205})
    assert plc.requests == []
    # a command is always sent
    await link.write_point("Q1.cmd", 0)
    assert await plc.get(1, 1, 0, 1) == [False]
    assert [r[1] for r in plc.requests] == [5]


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"Q1.cmd": 1, "L1.p_mw": 3.0}, WriteRejected),  # to_twin
        ({"Q1.cmd": 1, "nope.x": 3.0}, WriteRejected),  # not on this link
        ({"Q1.cmd": 1, "L1.loading_percent": 3.0}, WriteRejected),  # input register
        ({"Q1.cmd": 1, "T1.avr_vset_pu": 1.5}, OutOfRange),
        ({"Q1.cmd": 1, "T1.avr_vset_pu": math.nan}, OutOfRange),
        ({"Q1.cmd": 1, "T1.avr_auto": "x"}, OutOfRange),
    ],
)
async def test_refused_writes_send_nothing(plc, link, values, error):
    plc.requests.clear()
    with pytest.raises(error) as ei:
        await link.write_outputs(values)
    assert plc.requests == []
    assert await plc.get(1, 1, 0, 1) == [False]
    bad = [n for n in values if n != "Q1.cmd"][0]
    assert bad in str(ei.value)


async def test_write_exception_names_point(plc):
    far = [_pt("T9.vset", "holding_register", 40, direction="to_field", kind="setpoint")]
    async with ModbusLink("127.0.0.1", plc.port, far, timeout_s=0.5) as lk:
        with pytest.raises(ProtocolError) as ei:
            await lk.write_point("T9.vset", 1.0)
        assert ei.value.point == "T9.vset" and ei.value.code == 2


async def test_unknown_unit_is_a_protocol_error(plc):
    pts = [_pt("U7.p_mw", "input_register", 0, unit=7, kind="measurement")]
    async with ModbusLink("127.0.0.1", plc.port, pts, timeout_s=0.5) as lk:
        with pytest.raises(ProtocolError) as ei:
            await lk.poll()
        assert ei.value.point == "U7.p_mw" and ei.value.code == 4  # this server answers 04
        assert lk.read_inputs()["U7.p_mw"].quality is Quality.INVALID


async def test_silent_device_times_out_and_starts_over(free_port):
    """A device that accepts the connection but never answers: HilTimeout, then a new socket."""
    accepted = 0
    writers = []

    async def silent(reader, writer):
        nonlocal accepted
        accepted += 1
        writers.append(writer)
        await reader.read(1000)

    server = await asyncio.start_server(silent, "127.0.0.1", free_port)
    try:
        pts = [_pt("L1.p_mw", "input_register", 0, kind="measurement")]
        async with ModbusLink(
            "127.0.0.1", free_port, pts, timeout_s=0.2, backoff_min_s=0.05, backoff_max_s=0.2
        ) as lk:
            with pytest.raises(HilTimeout, match="0.2 s"):
                await lk.poll()
            assert lk.stats["errors"] == 1
            assert lk.read_inputs()["L1.p_mw"].quality is Quality.COMMS_LOST
            await _until(lambda: lk.connected)  # a fresh connection
            assert accepted == 2 and lk.stats["reconnects"] == 1
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


# --- connection loss -----------------------------------------------------------------------
async def test_server_killed_and_restarted(plc, link):
    await _fill(plc)
    await link.poll()
    assert all(s.quality is Quality.GOOD for s in link.read_inputs().values())
    await plc.stop()
    await _until(lambda: not link.connected)
    s = link.read_inputs()  # never raises
    assert all(x.quality is Quality.COMMS_LOST for x in s.values())
    assert s["L1.p_mw"].value == pytest.approx(12.5)  # last value kept
    with pytest.raises(CommsLost):
        await link.poll()
    with pytest.raises(CommsLost):
        await link.write_point("Q1.cmd", 1)
    # down for a while: reconnect attempts back off (no busy loop)
    before = link.stats["reconnect_attempts"]
    await asyncio.sleep(1.0)
    attempts = link.stats["reconnect_attempts"] - before
    assert 1 <= attempts <= 8, attempts  # 0.05, 0.1, 0.2, 0.4, 0.4 ... at most ~6 in 1 s
    await plc.start()  # same port
    await _fill(plc)
    await _until(lambda: link.connected)
    await link.poll()
    s = link.read_inputs()
    assert all(x.quality is Quality.GOOD for x in s.values()), s
    assert link.stats["reconnects"] >= 1


async def test_connect_refused_raises_commslost(free_port):
    lk = ModbusLink("127.0.0.1", free_port, POINTS[:1], timeout_s=0.5)
    with pytest.raises(CommsLost, match=str(free_port)):
        await lk.connect()
    assert not lk.connected
    assert lk.read_inputs()["Q1.closed"].quality is Quality.COMMS_LOST
    await lk.close()


async def test_close_leaks_no_tasks(plc):
    before = asyncio.all_tasks()
    lk = ModbusLink("127.0.0.1", plc.port, POINTS, poll_interval_s=0.02, backoff_min_s=0.05)
    await _fill(plc)
    await lk.connect()
    assert await lk.wait_update(WAIT)  # the background poller delivers
    assert lk.read_inputs()["L1.p_mw"].value == pytest.approx(12.5)
    await plc.stop()
    await _until(lambda: not lk.connected)  # reconnect task now running
    await lk.close()
    await lk.close()  # idempotent
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leaked, leaked


# --- our Modbus TCP client (hil.links.mbap) against scripted peers -------------------------
class Scripted:
    """A raw asyncio TCP peer: ``answer(tid, unit, pdu) -> bytes | None`` per request frame
    (None: stay silent); frames are built with :func:`_frame`."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.requests: list[tuple[int, int, bytes]] = []
        self.accepted = 0
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader, writer) -> None:
        self.accepted += 1
        self._writers.append(writer)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests.append((tid, unit, pdu))
                out = self.answer(tid, unit, pdu)
                if out:
                    writer.write(out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        for w in self._writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _frame(tid: int, unit: int, pdu: bytes, pid: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, pid, len(pdu) + 1, unit) + pdu


def _regs_pdu(fc: int, words: list[int]) -> bytes:
    return bytes([fc, 2 * len(words)]) + struct.pack(f">{len(words)}H", *words)


F32_POINT = _pt("L1.p_mw", "input_register", 0, kind="measurement")


async def test_answer_with_another_transaction_id_is_dropped():
    """A response is paired with its request by transaction id: a stray one is not taken."""

    def answer(tid, unit, pdu):
        stray = _frame((tid + 7) % 0xFFFF, unit, _regs_pdu(4, _f32(-99.0)))
        return stray + _frame(tid, unit, _regs_pdu(4, _f32(12.5)))

    async with Scripted(answer) as peer:
        async with ModbusLink("127.0.0.1", peer.port, [F32_POINT], timeout_s=1.0) as lk:
            await lk.poll()
            assert lk.read_inputs()["L1.p_mw"].value == pytest.approx(12.5)
            assert lk._client is not None and lk._client.dropped == 1
            await lk.poll()
            tids = [t for t, _, _ in peer.requests]
            assert tids[1] == tids[0] + 1  # a fresh transaction id per request


async def test_late_answer_is_not_taken_for_the_next_request():
    """The answer to a request that timed out, arriving with the next request's, is dropped."""
    from hil.links.mbap import MbapClient, read_pdu

    held: list[bytes] = []

    def answer(tid, unit, pdu):
        if not held:  # hold the first answer back until the second request comes
            held.append(_frame(tid, unit, _regs_pdu(4, [111])))
            return None
        return held[0] + _frame(tid, unit, _regs_pdu(4, [222]))

    async with Scripted(answer) as peer:
        client = MbapClient()
        await client.connect("127.0.0.1", peer.port, timeout=WAIT)
        try:
            with pytest.raises(TimeoutError):
                await client.request(1, read_pdu(4, 0, 1), 0.1)
            rr = await client.request(1, read_pdu(4, 0, 1), WAIT)
            assert rr.registers(1) == (222,) and client.dropped == 1
        finally:
            client.close()


@pytest.mark.parametrize(
    "reply, what",
    [
        (lambda tid, unit: _frame(tid, unit, _regs_pdu(4, _f32(1.0)), pid=1), "protocol id 1"),
        (lambda tid, unit: _frame(tid, unit, _regs_pdu(3, _f32(1.0))), "function code 3"),
        (lambda tid, unit: _frame(tid, unit, _regs_pdu(4, [1, 2, 3])), "expected 6 bytes"),
    ],
    ids=["protocol-id", "function-code", "length"],
)
async def test_a_frame_that_is_not_the_answer_drops_the_connection(reply, what):
    """Not Modbus TCP, or not an answer to the request: CommsLost naming why, a new socket."""
    async with Scripted(lambda tid, unit, pdu: reply(tid, unit)) as peer:
        async with ModbusLink(
            "127.0.0.1", peer.port, [F32_POINT], timeout_s=1.0, backoff_min_s=0.05
        ) as lk:
            with pytest.raises(CommsLost, match=what):
                await lk.poll()
            assert lk.read_inputs()["L1.p_mw"].quality is Quality.COMMS_LOST
            await _until(lambda: lk.connected)
            assert peer.accepted == 2


async def test_exception_answer_names_register_and_code():
    async with Scripted(lambda tid, unit, pdu: _frame(tid, unit, bytes([0x84, 0x02]))) as peer:
        async with ModbusLink("127.0.0.1", peer.port, [F32_POINT], timeout_s=1.0) as lk:
            with pytest.raises(
                ProtocolError, match=r"input_register 0\+2 unit 1.*exception 2"
            ) as ei:
                await lk.poll()
            assert ei.value.point == "L1.p_mw" and ei.value.code == 2
            assert lk.connected  # an exception is an answer: the connection stays


def test_request_pdus_match_the_protocol():
    """Request PDUs byte for byte as the Modbus Application Protocol v1.1b3 spells them."""
    from hil.links.mbap import read_pdu, write_coil_pdu, write_coils_pdu, write_registers_pdu

    assert read_pdu(3, 0x006B, 3) == bytes.fromhex("03006b0003")
    assert write_coil_pdu(0x00AC, True) == bytes.fromhex("0500acff00")
    assert write_coil_pdu(0x00AC, False) == bytes.fromhex("0500ac0000")
    bits = [True, False, True, True, False, False, True, True, True, False]  # CD 01
    assert write_coils_pdu(0x0013, bits) == bytes.fromhex("0f0013000a02cd01")
    assert write_registers_pdu(0x0001, [0x000A, 0x0102]) == bytes.fromhex("100001000204000a0102")


# --- an independent peer: Debian's mbpoll (libmodbus) on the same pymodbus server ----------
def _mbpoll(port: int, *opts: str, values: tuple[str, ...] = ()) -> str:
    import shutil
    import subprocess

    exe = shutil.which("mbpoll")
    if exe is None:
        pytest.skip("mbpoll not installed (apt-get install -y mbpoll)")
    cmd = [exe, "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-o", "2", *opts]
    cmd += ["127.0.0.1", *(("--", *values) if values else ())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, (cmd, done.stdout, done.stderr)
    return done.stdout


async def test_writes_and_reads_agree_with_mbpoll(plc):
    """What our client writes, libmodbus reads back; what libmodbus writes, we read."""
    pts = [
        _pt("T1.avr_vset_pu", "holding_register", 0, direction="to_field", kind="setpoint",
            low=0.0, high=2.0),
        _pt("Q1.cmd", "coil", 3, "bool", direction="to_field", kind="command", low=0, high=1),
        _pt("H.level", "holding_register", 4, kind="measurement"),
    ]  # fmt: skip
    async with ModbusLink("127.0.0.1", plc.port, pts, timeout_s=1.0) as lk:
        await lk.write_point("T1.avr_vset_pu", 1.03125)
        await lk.write_point("Q1.cmd", 1)
        got = await asyncio.to_thread(_mbpoll, plc.port, "-t", "4:float", "-B", "-r", "0")
        assert re.search(r"\[0\]:\s+1\.03125\b", got), got
        coils = await asyncio.to_thread(_mbpoll, plc.port, "-t", "0", "-r", "3")
        assert re.search(r"\[3\]:\s+1\b", coils), coils
        await asyncio.to_thread(
            _mbpoll, plc.port, "-t", "4:float", "-B", "-r", "4", values=("-2.5",)
        )
        await lk.poll()
        assert lk.read_inputs()["H.level"].value == pytest.approx(-2.5)
