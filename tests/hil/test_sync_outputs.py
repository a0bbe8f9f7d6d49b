"""The sync loop's output hot path: pre-encoded OPC UA writes, vectorised deadband, pipelined
writes, recorder row groups written between steps, the twin server's changed-only publication.

The OPC UA tests run OpcuaLink against a plain asyncua Server on 127.0.0.1 (no mocks); the loop
tests use a tiny in-process FieldLink and the real GridModel.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Server, ua
from asyncua.ua.ua_binary import struct_to_binary

from hil.errors import OutOfRange, ProtocolError, WriteRejected
from hil.links.base import FieldLink
from hil.links.opcua import OpcuaLink, _to_python
from hil.sync import SyncLoop
from twin.model import GridModel
from twin.pointmap import OpcuaBinding, Point, generate_pointmap
from twin.quality import Quality, Sample

NS = "urn:test:outputs"
VTYPES = {
    "B1.vm_pu": ua.VariantType.Float,
    "L1.p_from_mw": ua.VariantType.Double,
    "Q1.cmd": ua.VariantType.Boolean,
    "T1.avr_auto": ua.VariantType.UInt16,
    "T1.tap_set": ua.VariantType.Int16,
    "L2.i_ka": ua.VariantType.Float,  # not writable on the server
}


def _point(name: str, **kw) -> Point:
    elem, col = name.split(".")
    path = ("SS1", f"BAY_{elem}", elem, col)
    kw.setdefault("kind", "measurement")
    return Point(
        name=name, table="x", column=col, element=elem, direction="to_field",
        opcua=OpcuaBinding(node_id=f"ns=7;s={'/'.join(path)}", browse_path=path), **kw,
    )  # fmt: skip


POINTS = (
    _point("B1.vm_pu", deadband=0.001, interval_s=0.3, low=0.0, high=2.0),
    _point("L1.p_from_mw", deadband=0.01),
    _point("Q1.cmd", kind="command", low=0, high=1),
    _point("T1.avr_auto", kind="setpoint", low=0, high=1),
    _point("T1.tap_set", kind="setpoint", low=-9, high=9),
    _point("L2.i_ka"),
)


class Plant:
    """An asyncua server with one variable per point; records each Write request's size."""

    def __init__(self, port: int, start_server) -> None:
        self._start_server = start_server
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/outputs/"
        self.server: Server | None = None
        self.writes: list[int] = []
        self.ns = 0

    async def start(self) -> None:
        variables = []
        for p in POINTS:
            vt = VTYPES[p.name]
            init = False if vt == ua.VariantType.Boolean else 0
            path = "/".join(p.opcua.browse_path)
            variables.append((path, p.name, ua.Variant(init, vt), p.name != "L2.i_ka"))
        self.server, self.ns = await self._start_server(self.endpoint, NS, variables, self.writes)

    async def get(self, name: str):
        p = next(p for p in POINTS if p.name == name)
        nid = ua.NodeId("/".join(p.opcua.browse_path), self.ns)
        return (await self.server.get_node(nid).read_data_value()).Value


@pytest.fixture
async def plant(free_port, start_plain_server):
    p = Plant(free_port, start_plain_server)
    await p.start()
    yield p
    await p.server.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 1_764_134_400.0

    def __call__(self) -> float:
        return self.t


def test_encoded_write_values_are_byte_identical_to_asyncua():
    t = 1_764_134_400.123456
    link = OpcuaLink("opc.tcp://127.0.0.1:1/", POINTS, clock=lambda: t)
    for p in POINTS:  # what connect() resolves
        link._node[p.name] = ua.NodeId("/".join(p.opcua.browse_path), 3)
        link._vtype[p.name] = VTYPES[p.name]
    link._node_version += 1
    values = [1.0123456789, -12.5e-3, 1.0, 0.0, -4.0, 0.25]
    items = list(zip(POINTS, values))
    params = ua.WriteParameters()
    when = datetime.fromtimestamp(t, UTC)
    for p, v in items:
        vt = VTYPES[p.name]
        wv = ua.WriteValue(NodeId=link._node[p.name], AttributeId=ua.AttributeIds.Value)
        wv.Value = ua.DataValue(ua.Variant(_to_python(v, vt), vt), SourceTimestamp=when)
        params.NodesToWrite.append(wv)
    assert link._encode(items) == struct_to_binary(params)
    link.write_timestamps = False
    link._prefix_version = -1
    for wv in params.NodesToWrite:
        wv.Value.SourceTimestamp = None
    assert link._encode(items) == struct_to_binary(params)


@pytest.mark.usefixtures("no_task_leak")
async def test_write_batch_deadband_refresh_and_checks(plant):
    clock = Clock()
    link = OpcuaLink(plant.endpoint, POINTS, namespace=NS, timeout_s=5.0, clock=clock)
    await link.connect()
    try:
        names = ["B1.vm_pu", "L1.p_from_mw", "T1.avr_auto", "T1.tap_set"]
        batch = link.prepare_outputs(names)
        plant.writes.clear()  # set_writable() wrote attributes while building the server
        vals = np.array([1.02, -3.25, 1.0, -2.0])
        assert await link.write_batch(batch, vals) == 4
        assert plant.writes == [4]
        assert (await plant.get("B1.vm_pu")).Value == pytest.approx(1.02, abs=1e-6)
        assert (await plant.get("L1.p_from_mw")).Value == -3.25
        assert (await plant.get("T1.avr_auto")).Value == 1
        assert (await plant.get("T1.tap_set")).Value == -2
        # inside the deadbands (B1 0.001, L1 0.01); setpoints have none: always sent
        clock.t += 0.1
        vals = np.array([1.0205, -3.255, 1.0, -2.0])
        assert await link.write_batch(batch, vals) == 2
        assert plant.writes[-1] == 2
        # B1 was last sent 0.35 s ago, past its 0.3 s interval: sent again although unchanged
        clock.t += 0.25
        mask = np.array([True, True, False, False])
        assert await link.write_batch(batch, vals, mask) == 1
        assert (await plant.get("B1.vm_pu")).Value == pytest.approx(1.0205, abs=1e-6)
        # out of range or NaN: nothing sent at all
        before = list(plant.writes)
        for bad in (np.array([2.5, 0, 0, 0]), np.array([1.0, math.nan, 0, 0])):
            with pytest.raises(OutOfRange):
                await link.write_batch(batch, bad)
        assert plant.writes == before
        # a node the server refuses: the error names it
        refused = link.prepare_outputs(["L1.p_from_mw", "L2.i_ka"])
        with pytest.raises(ProtocolError) as ei:
            await link.write_batch(refused, np.array([1.0, 0.2]))
        assert ei.value.point == "L2.i_ka" and link.connected
        with pytest.raises(WriteRejected):
            link.prepare_outputs(["nope.x"])
        # the ordinary dict path goes through the same encoder
        await link.write_outputs({"Q1.cmd": 1, "L1.p_from_mw": 7.5})
        assert (await plant.get("Q1.cmd")).Value is True
        assert (await plant.get("L1.p_from_mw")).Value == 7.5
    finally:
        await link.close()


# --- the loop ------------------------------------------------------------------------------
class SlowLink(FieldLink):
    """Writes take until ``release`` is set; inputs are whatever the net has."""

    protocol = "fake"

    def __init__(self, points) -> None:
        super().__init__("slow:1", points)
        self.connected = True
        self.release = asyncio.Event()
        self.release.set()
        self.sent: list[dict[str, float]] = []
        self.fail_next = False

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def poll(self) -> None:
        pass

    async def _send(self, items) -> None:
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ProtocolError("fake", "BadSomething", "refused", items[0][0].name)
        self.sent.append({p.name: v for p, v in items})

    def read_inputs(self, now=None):
        return {p.name: Sample(0.0, Quality.GOOD, 0.0) for p in self.inputs}


def _loop(feeder_net, **kw):
    net = feeder_net(breaker=False)
    pm = generate_pointmap(net, mode="hil")
    # without the heartbeat (issue 11): these tests count the output requests of a step
    points = [
        p
        for p in pm.points
        if p.table != "switch" and p.column != "tap_pos" and p.column != "heartbeat"
    ]
    link = SlowLink(points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GridModel(net)
    return model, link, SyncLoop(model, pm, [link], mode="hil", **kw)


@pytest.mark.usefixtures("no_task_leak")
async def test_pipelined_writes_are_collected_by_the_next_step(feeder_net):
    model, link, loop = _loop(feeder_net, write_mode="pipelined")
    n_out = len([p for p in link.outputs if p.kind == "measurement"])
    link.release.clear()
    rep0 = await loop.step(0.0)
    assert rep0.written == 0 and link.sent == []  # sent, response not back yet
    rep1 = await loop.step(0.1)  # the previous write is still in flight: this one waits
    assert loop.stats()["writes_busy"] == 1 and rep1.written == 0
    link.release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rep2 = await loop.step(0.2)
    assert rep2.written == n_out and len(link.sent) == 1
    assert set(link.sent[0]) == {p.name for p in link.outputs if p.kind == "measurement"}
    # an error comes back with the next step, as an event and a counted write error
    link.fail_next = True
    await loop.drain()
    model.update("load", "p_mw", [16.0])
    await loop.step(0.3)
    await loop.drain()
    assert loop.stats()["write_errors"] == 1
    assert loop.stats()["write_ack"]["n"] >= 2
    with pytest.raises(ValueError, match="write_mode"):
        SyncLoop(model, loop.pointmap, [link], write_mode="later")


async def test_await_mode_outputs_match_the_solution(feeder_net):
    model, link, loop = _loop(feeder_net)
    rep = await loop.step(0.0)
    sol = loop.last_solution
    assert rep.written == len(link.sent[0]) > 0
    assert link.sent[0]["MV.vm_pu"] == pytest.approx(float(sol.get("bus", "vm_pu")[1]))
    assert loop.outputs["LD1.p_mw"] == pytest.approx(14.0)
    assert link.sent[0]["T1.loading_percent"] == pytest.approx(
        float(sol.get("trafo", "loading_percent")[0])
    )


class CountingRecorder:
    """A recorder that writes a row group every ``flush_every`` rows, like twin.recorder."""

    def __init__(self, flush_every: int) -> None:
        self.flush_every = flush_every
        self.pending = 0
        self.in_record = 0  # row groups written from inside record() (inside a step)
        self.between = 0  # row groups written by an explicit flush()

    def record(self, t, values) -> None:
        self.pending += 1
        if self.pending >= self.flush_every:
            self.in_record += 1
            self.pending = 0

    def flush(self) -> None:
        if self.pending:
            self.between += 1
        self.pending = 0

    def event(self, *a, **kw) -> None:
        pass

    def alarm(self, *a, **kw) -> None:
        pass


async def test_recorder_row_groups_are_written_between_steps(feeder_net):
    rec = CountingRecorder(flush_every=5)
    model, link, loop = _loop(feeder_net, recorder=rec, period_s=0.05)  # idle time on a busy CI
    await loop.run(steps=22)
    assert rec.between >= 4 and rec.in_record == 0
    assert loop.stats()["idle_flushes"] == rec.between
