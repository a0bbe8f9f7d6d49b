"""The Modbus link's and the sync loop's vectorised input path against their per-point reference
(``bulk=False`` / ``GRIDTWIN_BULK=0``), and pipelined block reads (``max_in_flight``), over real
loopback sockets (a pymodbus server, a raw asyncio server, the emulated substation).

pymodbus 3.16.1's server does not take pipelined requests (the second frame of a batch got no
answer): pipelining is tried here only against servers that serve them in order of arrival."""

from __future__ import annotations

import asyncio
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.errors import HilTimeout, ProtocolError
from hil.links.mbap import MbapClient, read_pdu
from hil.links.modbus import ModbusLink
from hil.store import QUALITY_CODE
from tests.hil.test_links_modbus import POINTS, Plc, _f32, _fill, _pt
from tests.hil.test_store_arrays import _mb_point, _point_specs
from tests.hil.test_sync_plausibility import PV, Rig, pv_net
from twin.pointmap import BlockCodec, decode_registers
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")


@pytest.fixture
async def plc(free_port):
    p = Plc(free_port)
    await p.start()
    yield p
    await p.stop()


class Clock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for name, s in a.items():
        r = b[name]
        assert (s.value == r.value) or (math.isnan(s.value) and math.isnan(r.value)), name
        assert s.quality is r.quality, name
        assert s.timestamp == r.timestamp, name
        assert type(s.value) is float and type(r.value) is float, name


async def _pair(port: int, points, clock: Clock, max_in_flight: int):
    ref = ModbusLink("127.0.0.1", port, points, timeout_s=0.5, clock=clock, bulk=False)
    vec = ModbusLink(
        "127.0.0.1", port, points, timeout_s=0.5, clock=clock, max_in_flight=max_in_flight
    )
    assert vec.bulk and not ref.bulk
    await ref.connect()
    await vec.connect()
    return ref, vec


async def _poll_both(ref: ModbusLink, vec: ModbusLink) -> None:
    errors = []
    for lk in (ref, vec):
        try:
            await lk.poll()
            errors.append(None)
        except ProtocolError as exc:
            errors.append((type(exc), exc.code, str(exc).replace(lk.name, "LINK")))
    assert errors[0] == errors[1]


def _arrays_match(lk: ModbusLink, now: float | None = None) -> None:
    a = lk.input_arrays(now)
    got = lk.read_inputs(now)
    assert a.names == tuple(got)
    assert a.quality.tolist() == [QUALITY_CODE[s.quality] for s in got.values()]


async def test_vectorised_inputs_equal_the_per_point_reference(plc):
    clock = Clock()
    ref, vec = await _pair(plc.port, POINTS, clock, 1)
    try:
        _same(ref.read_inputs(), vec.read_inputs())  # nothing read yet: STALE, NaN, time 0
        await _fill(plc)
        await plc.set(1, 4, 4, [0x7FFF])  # tap sentinel: INVALID
        await _poll_both(ref, vec)
        _same(ref.read_inputs(), vec.read_inputs())
        assert vec.read_inputs()["T1.tap_pos"].quality is Quality.INVALID
        assert vec.read_inputs()["L1.p_mw"].value == 12.5
        _arrays_match(vec)
        # unchanged blocks, a later time; then changes
        clock.t += 0.5
        await _poll_both(ref, vec)
        _same(ref.read_inputs(), vec.read_inputs())
        await plc.set(1, 4, 2, _f32(float("nan")))
        await plc.set(1, 4, 4, [3])
        await plc.set(1, 2, 0, [False, True])
        clock.t += 0.5
        await _poll_both(ref, vec)
        _same(ref.read_inputs(), vec.read_inputs())
        assert vec.read_inputs()["L1.q_mvar"].quality is Quality.INVALID
        # staleness at a later read time, and cut-off devices
        for later in (clock.t + 1.0, clock.t + 100.0):
            _same(ref.read_inputs(later), vec.read_inputs(later))
            _arrays_match(vec, later)
        for lk in (ref, vec):
            lk.cut(["Q1.closed", "L1.p_mw", "Q1.cmd"])
        _same(ref.read_inputs(), vec.read_inputs())
        assert vec.read_inputs()["L1.p_mw"].quality is Quality.COMMS_LOST
    finally:
        await ref.close()
        await vec.close()
    _same(ref.read_inputs(), vec.read_inputs())  # down: every input COMMS_LOST, values kept
    assert {s.quality for s in vec.read_inputs().values()} == {Quality.COMMS_LOST}


async def test_an_exception_block_gives_the_same_error_and_qualities(plc):
    """A block the server does not serve (02 illegal address) between good blocks: INVALID
    points and the same ProtocolError on both paths, the good blocks read."""
    points = (
        *POINTS[:7],
        _pt("X.p_mw", "input_register", 40, kind="measurement"),  # the PLC serves 0..19
        POINTS[7],
    )
    clock = Clock()
    ref, vec = await _pair(plc.port, points, clock, 1)
    try:
        await _fill(plc)
        await _poll_both(ref, vec)
        _same(ref.read_inputs(), vec.read_inputs())
        got = vec.read_inputs()
        assert got["X.p_mw"].quality is Quality.INVALID
        assert got["G2.p_mw"].value == 1.5 and got["L1.p_mw"].value == 12.5
        with pytest.raises(ProtocolError):
            await vec.poll()
    finally:
        await ref.close()
        await vec.close()


class _Backwards:
    """A raw Modbus TCP server that answers FC4 reads (register value = address) and, of a
    pipelined batch, answers the last request first; ``drop`` request numbers get no answer."""

    def __init__(self, drop: frozenset[int] = frozenset()) -> None:
        self.drop = drop
        self.seen = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frames = []
                head = await reader.readexactly(7)
                frames.append(head + await reader.readexactly(int.from_bytes(head[4:6]) - 1))
                await asyncio.sleep(0.02)  # the rest of the batch arrives meanwhile
                while len(reader._buffer) >= 7:  # type: ignore[attr-defined]
                    head = await reader.readexactly(7)
                    frames.append(head + await reader.readexactly(int.from_bytes(head[4:6]) - 1))
                out = []
                for f in frames:
                    self.seen += 1
                    if self.seen in self.drop:
                        continue
                    address, count = struct.unpack(">HH", f[8:12])
                    pdu = bytes([4, 2 * count]) + struct.pack(
                        f">{count}H", *range(address, address + count)
                    )
                    out.append(f[:4] + (len(pdu) + 1).to_bytes(2, "big") + f[6:7] + pdu)
                writer.write(b"".join(reversed(out)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_pipelined_responses_are_paired_by_transaction_id():
    srv = _Backwards()
    port = await srv.start()
    client = MbapClient()
    try:
        await client.connect("127.0.0.1", port, timeout=2.0)
        got = await client.request_many(
            [(1, read_pdu(4, 10, 2)), (1, read_pdu(4, 20, 1)), (1, read_pdu(4, 30, 3))], 2.0
        )
        assert [r.registers(n) for r, n in zip(got, (2, 1, 3))] == [
            (10, 11),
            (20,),
            (30, 31, 32),
        ]
        assert (await client.request(1, read_pdu(4, 7, 1), 2.0)).registers(1) == (7,)
    finally:
        client.close()
        await srv.stop()


async def test_a_pipelined_request_without_an_answer_times_out_and_loses_the_link():
    srv = _Backwards(drop=frozenset({2}))
    port = await srv.start()
    pts = (
        _pt("A.p_mw", "input_register", 0, kind="measurement"),
        _pt("B.p_mw", "input_register", 200, kind="measurement"),
        _pt("C.p_mw", "input_register", 400, kind="measurement"),
    )
    lk = ModbusLink("127.0.0.1", port, pts, timeout_s=0.3, max_in_flight=4, backoff_min_s=5.0)
    try:
        await lk.connect()
        assert len(lk.blocks) == 3
        with pytest.raises(HilTimeout):
            await lk.poll()
        assert not lk.connected and lk.stats["errors"] == 1
        got = lk.read_inputs()
        assert {s.quality for s in got.values()} == {Quality.COMMS_LOST}
        assert got["A.p_mw"].value == struct.unpack(">f", struct.pack(">2H", 0, 1))[0]
    finally:
        await lk.close()
        await srv.stop()


async def _run_rig(feeder_net, monkeypatch, bulk: str, max_in_flight: int):
    monkeypatch.setenv("GRIDTWIN_BULK", bulk)
    out = []
    async with Rig(pv_net(feeder_net), "hil") as rig:
        for lk in rig.links:
            if isinstance(lk, ModbusLink):
                lk.max_in_flight = max_in_flight
        assert (rig.loop._bulk is not None) == (bulk == "1")
        for pv in (0.02, 1e30, 1e30, 0.021, None, 0.019):
            rep = await rig.tick(pv)
            samples = {
                n: (s.value, s.quality, s.timestamp) for n, s in dict(rig.loop.samples).items()
            }
            out.append(
                (
                    rep.applied,
                    rep.stale,
                    rep.implausible,
                    rep.cleared,
                    [(a.kind, a.point, a.message) for a in rep.alarms],
                    rep.converged,
                    rep.written,
                    samples,
                    rig.pv_in_model(),
                    dict(rig.loop.outputs),
                )
            )
    return out


async def test_sync_loop_vectorised_path_equals_the_reference(feeder_net, monkeypatch):
    """The 1e30 PV probe (issue 11) stepped on both paths: the same reports, samples,
    alarms, model values and outputs, step by step."""
    ref = await _run_rig(feeder_net, monkeypatch, "0", 1)
    vec = await _run_rig(feeder_net, monkeypatch, "1", 4)
    assert len(ref) == len(vec)
    for k, (a, b) in enumerate(zip(ref, vec)):
        sa, sb = a[7], b[7]
        assert list(sa) == list(sb), k
        for n in sa:
            va, vb = sa[n], sb[n]
            assert va[1:] == vb[1:] and (va[0] == vb[0] or np.isnan(va[0]) and np.isnan(vb[0]))
        assert a[:7] == b[:7], k
        assert a[8:] == b[8:], k
    assert any(r[2] == (PV,) for r in vec)  # the probe did fire


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_point_specs, st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4)),
        min_size=1,
        max_size=12,
    )
)
def test_block_reader_decodes_as_decode_registers(cases):
    """BlockCodec.reader (a block's register array as it came) against the per-point codec,
    on every dtype, word order, scale, offset and sentinel; a reversed subset too."""
    points = [_mb_point(k, *spec) for k, (spec, _) in enumerate(cases)]
    codec = BlockCodec(points)
    words = np.array([w for _, r in cases for w in r], dtype=">u2")  # as in a response
    offsets = np.arange(len(points)) * 4
    got = codec.reader(offsets).decode(words)
    for k, p in enumerate(points):
        want = decode_registers(p, words[4 * k : 4 * k + codec.count[k]].tolist())
        assert (math.isnan(want) and math.isnan(got[k])) or got[k] == want, (p.modbus, k)
        assert math.copysign(1.0, got[k]) == math.copysign(1.0, want) or math.isnan(want)
    idx = np.arange(len(points))[::-1]
    sub = codec.reader(offsets[::-1], idx).decode(words)
    assert np.array_equal(sub, got[::-1], equal_nan=True)
