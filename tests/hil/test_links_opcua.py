"""OpcuaLink against a plain asyncua Server on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Server, ua

from hil.errors import CommsLost, OutOfRange, ProtocolError, WriteRejected
from hil.links.opcua import OpcuaLink
from twin.pointmap import OpcuaBinding, Point
from twin.quality import Quality

# Every test fails on leaked tasks (tests/hil/conftest.py), except the kill/restart one: a
# stopped asyncua *server* leaves its sessions' loops behind; that test checks our tasks itself.
leak_checked = pytest.mark.usefixtures("no_task_leak")

WAIT = 15.0  # upper bound for any wait on the network (never reached when things work)
NS = "urn:test:plant"


def _pt(name, vtype, *, direction="to_twin", kind="status", **kw):
    elem, col = name.split(".")
    path = ("SS1", f"BAY_{elem}", elem, col)
    return Point(
        name=name,
        table="x",
        column=col,
        element=elem,
        direction=direction,
        kind=kind,
        # ns=5 on purpose: the link must look the namespace index up by URI
        opcua=OpcuaBinding(node_id=f"ns=5;s={'/'.join(path)}", browse_path=path),
        **kw,
    ), vtype


SPEC = [
    _pt("Q1.closed", ua.VariantType.Boolean),
    _pt("T1.tap_pos", ua.VariantType.Int16),
    _pt("Q1.operations", ua.VariantType.UInt16, kind="measurement"),
    _pt("G1.p_mw", ua.VariantType.Float),
    _pt("L1.loading_percent", ua.VariantType.Double, kind="measurement"),
    _pt("Q1.cmd", ua.VariantType.Boolean, direction="to_field", kind="command", low=0, high=1),
    _pt("T1.avr_vset_pu", ua.VariantType.Float, direction="to_field", kind="setpoint",
        low=0.9, high=1.1),
    _pt("T1.avr_auto", ua.VariantType.UInt16, direction="to_field", kind="setpoint", low=0, high=1),
    _pt("B1.vm_pu", ua.VariantType.Double, direction="to_field", kind="measurement", deadband=1e-4),
    _pt("L2.p_from_mw", ua.VariantType.Double, direction="to_field", kind="measurement"),
    _pt("L3.i_ka", ua.VariantType.Double, direction="to_field", kind="measurement"),  # read-only
]  # fmt: skip
POINTS = tuple(p for p, _ in SPEC)
VTYPE = {p.name: vt for p, vt in SPEC}
INITIAL = {ua.VariantType.Boolean: False, ua.VariantType.Float: 0.0, ua.VariantType.Double: 0.0}


class Plant:
    """A plain asyncua server with one variable per point; counts Write requests."""

    def __init__(self, port: int, start_server) -> None:
        self.port = port
        self._start_server = start_server
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plant/"
        self.server: Server | None = None
        self.writes: list[int] = []  # number of nodes per Write request
        self.ns = 0

    async def start(self) -> None:
        variables = [
            (
                "/".join(p.opcua.browse_path),
                p.name,
                ua.Variant(INITIAL.get(vt, 0), vt),
                p.direction == "to_field" and p.name != "L3.i_ka",
            )
            for p, vt in SPEC
        ]
        self.server, self.ns = await self._start_server(self.endpoint, NS, variables, self.writes)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    def nodeid(self, name: str) -> ua.NodeId:
        return ua.NodeId("/".join(POINTS[[p.name for p in POINTS].index(name)].opcua.browse_path),
                         self.ns)  # fmt: skip

    async def set(self, name: str, value, *, status=ua.StatusCodes.Good, ts: float | None = None):
        vt = VTYPE[name]
        when = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
        dv = ua.DataValue(
            ua.Variant(value, vt), StatusCode=ua.StatusCode(status), SourceTimestamp=when
        )
        await self.server.write_attribute_value(self.nodeid(name), dv)

    async def get(self, name: str):
        return (await self.server.get_node(self.nodeid(name)).read_data_value()).Value.Value


@pytest.fixture
async def plant(free_port, start_plain_server):
    p = Plant(free_port, start_plain_server)
    await p.start()
    yield p
    await p.stop()


def _link(plant: Plant, **kw) -> OpcuaLink:
    opts = dict(
        namespace=NS, sampling_interval_s=0.05, timeout_s=2.0, watchdog_s=0.3,
        backoff_min_s=0.1, backoff_max_s=0.8,
    )  # fmt: skip
    opts.update(kw)
    return OpcuaLink(plant.endpoint, POINTS, **opts)


async def _until(cond, timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def _q(link: OpcuaLink, name: str) -> Quality:
    return link.read_inputs()[name].quality


async def _fill(plant: Plant) -> None:
    await plant.set("Q1.closed", True)
    await plant.set("T1.tap_pos", -3)
    await plant.set("Q1.operations", 17)
    await plant.set("G1.p_mw", 2.5)
    await plant.set("L1.loading_percent", 63.25)


EXPECTED = {
    "Q1.closed": 1.0,
    "T1.tap_pos": -3.0,
    "Q1.operations": 17.0,
    "G1.p_mw": 2.5,
    "L1.loading_percent": 63.25,
}


def _good_and_expected(link: OpcuaLink) -> bool:
    s = link.read_inputs()
    return all(s[n].quality is Quality.GOOD and s[n].value == v for n, v in EXPECTED.items())


@leak_checked
@pytest.mark.parametrize("mode", ["subscription", "poll"])
async def test_reads_every_kind(plant, mode):
    await _fill(plant)
    async with _link(plant, mode=mode) as link:
        if mode == "poll":
            await link.poll()
        await _until(lambda: _good_and_expected(link))
        s = link.read_inputs()
        assert set(s) == set(EXPECTED)
        assert abs(s["G1.p_mw"].timestamp - time.time()) < 60  # a SourceTimestamp, not 0
        # a change flows through
        await plant.set("G1.p_mw", 3.5)
        if mode == "poll":
            await link.poll()
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 3.5)


@leak_checked
async def test_bad_status_and_nan_are_invalid(plant):
    await _fill(plant)
    async with _link(plant) as link:
        await _until(lambda: _good_and_expected(link))
        await plant.set("L1.loading_percent", 50.0, status=ua.StatusCodes.BadSensorFailure)
        await plant.set("G1.p_mw", math.nan)
        await _until(lambda: _q(link, "L1.loading_percent") is Quality.INVALID)
        await _until(lambda: _q(link, "G1.p_mw") is Quality.INVALID)
        assert _q(link, "Q1.closed") is Quality.GOOD


@leak_checked
async def test_old_source_timestamp_is_stale(plant):
    """Staleness from the protocol (issue 15; this test pinned the old rule, where the first
    value after connecting with a 1 h old SourceTimestamp was STALE): the first notification
    is the point's current value, GOOD whatever its age; a later change that arrives stamped
    long ago is STALE, and the next timely change is GOOD again."""
    await _fill(plant)
    await plant.set("G1.p_mw", 9.0, ts=time.time() - 3600)
    async with _link(plant) as link:
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 9.0)
        assert _q(link, "G1.p_mw") is Quality.GOOD  # unchanged since long ago: still good
        await plant.set("G1.p_mw", 7.0, ts=time.time() - 3600)  # a change, stamped 1 h ago
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 7.0)
        assert _q(link, "G1.p_mw") is Quality.STALE
        assert _q(link, "Q1.closed") is Quality.GOOD
        await plant.set("G1.p_mw", 6.0)
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 6.0)
        assert _q(link, "G1.p_mw") is Quality.GOOD


FAST = [
    Point("G1.p_mw", "x", "p_mw", "G1", "to_twin", "status", interval_s=0.2,
          opcua=POINTS[3].opcua),
    Point("Q1.closed", "x", "closed", "Q1", "to_twin", "status", interval_s=0.2,
          opcua=POINTS[0].opcua),
]  # fmt: skip


class _FastClock:
    """Link time that runs ``rate`` times faster than the wall clock (a long run, briefly)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0 = time.time()

    def __call__(self) -> float:
        return self.t0 + (time.time() - self.t0) * self.rate


def _server_subscriptions(plant: Plant) -> list:
    return list(plant.server.iserver.subscription_service.subscriptions.values())


@leak_checked
async def test_staleness_after_interval_and_refresh_by_timestamp(plant):
    """Issue 15 (this test pinned the old rule, where an unrefreshed value of a live
    subscription went STALE after 3 intervals): a value nobody changes stays GOOD while the
    subscription publishes (keep-alives); it turns STALE when the server stops publishing; in
    poll mode the timestamp rule stays (a polled value ages by its SourceTimestamp)."""
    await _fill(plant)
    async with OpcuaLink(
        plant.endpoint, FAST, namespace=NS, sampling_interval_s=0.05, stale_factor=3.0
    ) as link:
        await _until(lambda: _q(link, "G1.p_mw") is Quality.GOOD)
        t = link.read_inputs()["G1.p_mw"].timestamp
        # far beyond 3 intervals of link time: unchanged and the subscription alive -> GOOD
        assert link.read_inputs(now=t + 100.0)["G1.p_mw"].quality is Quality.GOOD
        await asyncio.sleep(1.0)  # 5 intervals of silence but for the keep-alives
        assert _q(link, "G1.p_mw") is Quality.GOOD
        assert _q(link, "Q1.closed") is Quality.GOOD
        # the server stops publishing (its subscriptions stop, the session stays): STALE
        for sub in _server_subscriptions(plant):
            await sub.stop()
        await _until(lambda: _q(link, "G1.p_mw") is Quality.STALE)
        assert _q(link, "Q1.closed") is Quality.STALE
        assert link.connected
    async with OpcuaLink(
        plant.endpoint, FAST, namespace=NS, mode="poll", stale_factor=3.0
    ) as polled:
        await polled.poll()
        # poll mode: the same rule on the Reads (this pinned the old rule, aged by timestamp)
        t = polled.polled_at
        assert polled.read_inputs(now=t + 0.1)["G1.p_mw"].quality is Quality.GOOD
        assert polled.read_inputs(now=t + 1.0)["G1.p_mw"].quality is Quality.STALE


@leak_checked
async def test_poll_mode_staleness_from_the_reads(plant):
    """Poll mode, the subscription's rule on the Reads (issue 15): a value the server returns
    unchanged with status Good stays GOOD whatever its source timestamp's age; STALE when no Read
    has succeeded for stale_factor intervals of link time; a change stamped long ago is STALE
    until its next timely change; the first value after connecting is current, whatever its age."""
    await _fill(plant)
    await plant.set("G1.p_mw", 9.0, ts=time.time() - 3600)
    async with OpcuaLink(
        plant.endpoint, FAST, namespace=NS, mode="poll", stale_factor=3.0
    ) as polled:
        assert polled.polled_at is not None  # connecting reads every input once
        await polled.poll()
        assert polled.read_inputs()["G1.p_mw"].value == 9.0
        assert _q(polled, "G1.p_mw") is Quality.GOOD  # the first Read: current, 1 h old or not
        for _ in range(5):  # 1 s: five intervals, every one read back unchanged
            await asyncio.sleep(0.2)
            await polled.poll()
            assert _q(polled, "G1.p_mw") is Quality.GOOD
            assert _q(polled, "Q1.closed") is Quality.GOOD
        at = polled.polled_at
        assert at is not None
        # no Read for 3 intervals of link time: STALE, both the old and the fresh value
        assert polled.read_inputs(now=at + 0.5)["G1.p_mw"].quality is Quality.GOOD
        assert polled.read_inputs(now=at + 0.7)["G1.p_mw"].quality is Quality.STALE
        assert polled.read_inputs(now=at + 0.7)["Q1.closed"].quality is Quality.STALE
        await plant.set("G1.p_mw", 7.0, ts=time.time() - 3600)  # a change, stamped 1 h ago
        await polled.poll()
        assert polled.read_inputs()["G1.p_mw"].value == 7.0
        assert _q(polled, "G1.p_mw") is Quality.STALE
        await polled.poll()  # read back unchanged: still the late change
        assert _q(polled, "G1.p_mw") is Quality.STALE
        assert _q(polled, "Q1.closed") is Quality.GOOD
        await plant.set("G1.p_mw", 6.0)
        await polled.poll()
        assert _q(polled, "G1.p_mw") is Quality.GOOD
        await plant.set("G1.p_mw", 6.0, status=ua.StatusCodes.BadNoCommunication)
        await polled.poll()
        assert _q(polled, "G1.p_mw") is Quality.INVALID


@leak_checked
async def test_unchanged_statuses_stay_good_over_a_60s_run(plant):
    """Issue 15: OPC-UA-only status inputs with no change for 60 s of link time (a clock 20x
    the wall clock, 3 s of wall time) stay GOOD at every read, then go STALE when the server
    stops publishing."""
    await _fill(plant)
    clock = _FastClock(20.0)
    async with OpcuaLink(
        plant.endpoint, FAST, namespace=NS, sampling_interval_s=0.05, stale_factor=3.0,
        clock=clock,
    ) as link:  # fmt: skip
        await _until(lambda: _q(link, "Q1.closed") is Quality.GOOD)
        start = clock()
        reads = 0
        while clock() - start < 60.0 and reads < 1000:
            s = link.read_inputs()
            assert s["Q1.closed"].quality is Quality.GOOD, (clock() - start, s["Q1.closed"])
            assert s["G1.p_mw"].quality is Quality.GOOD, (clock() - start, s["G1.p_mw"])
            assert s["Q1.closed"].value == 1.0
            reads += 1
            await asyncio.sleep(0.05)
        assert clock() - start >= 60.0
        for sub in _server_subscriptions(plant):
            await sub.stop()
        await _until(lambda: _q(link, "Q1.closed") is Quality.STALE)
        assert _q(link, "G1.p_mw") is Quality.STALE


@leak_checked
async def test_write_outputs_in_one_request(plant):
    async with _link(plant) as link:
        plant.writes.clear()
        await link.write_outputs(
            {"Q1.cmd": 1, "T1.avr_vset_pu": 1.025, "T1.avr_auto": 1, "B1.vm_pu": 0.987,
             "L2.p_from_mw": -4.5}
        )  # fmt: skip
        assert plant.writes == [5]
        assert await plant.get("Q1.cmd") is True
        assert await plant.get("T1.avr_vset_pu") == pytest.approx(1.025, abs=1e-6)
        assert await plant.get("T1.avr_auto") == 1
        assert await plant.get("B1.vm_pu") == pytest.approx(0.987)
        assert await plant.get("L2.p_from_mw") == pytest.approx(-4.5)
        # inside B1's deadband and just written: not re-sent; the rest in one request
        await link.write_outputs({"B1.vm_pu": 0.98705, "L2.p_from_mw": -4.0})
        assert plant.writes == [5, 1]
        await link.write_point("Q1.cmd", 0)
        assert plant.writes == [5, 1, 1]
        assert await plant.get("Q1.cmd") is False
        assert link.stats["writes"] == 3


REFUSED = [
    ({"Q1.cmd": 1, "G1.p_mw": 3.0}, WriteRejected),  # to_twin
    ({"Q1.cmd": 1, "X1.nope": 3.0}, WriteRejected),  # not on this link
    ({"Q1.cmd": 1, "T1.avr_vset_pu": 1.2}, OutOfRange),
    ({"Q1.cmd": 1, "T1.avr_vset_pu": math.inf}, OutOfRange),
    ({"Q1.cmd": 1, "B1.vm_pu": math.nan}, OutOfRange),
]


@leak_checked
async def test_refused_writes_send_nothing(plant):
    # one server for all cases: an asyncua server takes seconds to build on a loaded machine
    async with _link(plant) as link:
        for values, error in REFUSED:
            plant.writes.clear()
            bad = [n for n in values if n != "Q1.cmd"][0]
            with pytest.raises(error, match=bad.replace(".", r"\.")):
                await link.write_outputs(values)
            assert plant.writes == [], values
            assert await plant.get("Q1.cmd") is False
        assert link.stats["writes"] == 0


@leak_checked
async def test_write_error_names_point_and_status(plant):
    async with _link(plant) as link:
        with pytest.raises(ProtocolError) as ei:
            await link.write_outputs({"B1.vm_pu": 1.0, "L3.i_ka": 0.2})
        assert ei.value.point == "L3.i_ka"
        assert ei.value.code in ("BadNotWritable", "BadUserAccessDenied")
        assert "L3.i_ka" in str(ei.value) and ei.value.code in str(ei.value)
        assert link.connected and link.stats["errors"] == 1


@leak_checked
async def test_missing_node_fails_connect_naming_point(plant):
    path = ("SS1", "BAY_Z9", "Z9", "p_mw")
    ghost = Point(
        "Z9.p_mw", "x", "p_mw", "Z9", "to_twin", "status",
        opcua=OpcuaBinding("ns=5;s=" + "/".join(path), path),
    )  # fmt: skip
    link = OpcuaLink(plant.endpoint, [ghost], namespace=NS)
    with pytest.raises(ProtocolError, match="Z9.p_mw") as ei:
        await link.connect()
    assert ei.value.code == "BadNodeIdUnknown"
    assert not link.connected
    await link.close()


@leak_checked
async def test_connect_refused_raises_commslost(free_port):
    link = OpcuaLink(f"opc.tcp://127.0.0.1:{free_port}/x/", POINTS, timeout_s=1.0)
    with pytest.raises(CommsLost):
        await link.connect()
    assert all(s.quality is Quality.COMMS_LOST for s in link.read_inputs().values())
    await link.close()


async def test_server_killed_and_restarted(plant, caplog):
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    await _fill(plant)
    before = asyncio.all_tasks()
    link = _link(plant)
    await link.connect()
    try:
        await _until(lambda: _good_and_expected(link))
        await plant.stop()
        await _until(lambda: not link.connected)
        s = link.read_inputs()  # never raises
        assert all(x.quality is Quality.COMMS_LOST for x in s.values())
        assert s["G1.p_mw"].value == 2.5
        with pytest.raises(CommsLost):
            await link.write_point("Q1.cmd", 1)
        with pytest.raises(CommsLost):
            await link.poll()
        n0 = link.stats["reconnect_attempts"]
        await asyncio.sleep(1.5)
        attempts = link.stats["reconnect_attempts"] - n0
        assert 1 <= attempts <= 8, attempts  # backoff 0.1 .. 0.8 s: no busy loop
        await plant.start()  # same port, a fresh server (values back to the initial ones)
        await _fill(plant)
        await _until(lambda: link.connected)
        await _until(lambda: _good_and_expected(link))
        await plant.set("G1.p_mw", 4.0)  # the re-created subscription delivers changes
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 4.0)
        await link.write_point("Q1.cmd", 1)
        assert await plant.get("Q1.cmd") is True
        assert link.stats["reconnects"] == 1
    finally:
        await link.close()
        await link.close()  # idempotent
    await asyncio.sleep(0)
    leaked = {t for t in asyncio.all_tasks() - before if not t.done() and not _server_side(t)}
    assert not leaked, leaked


def _server_side(task: asyncio.Task) -> bool:
    """Tasks of the test's own asyncua server (closing the session we left) are not ours."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and "asyncua/server" in code.co_filename


class BlackholeProxy:
    """A TCP proxy on 127.0.0.1 that can swallow all traffic while keeping sockets open."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.blackhole = False
        self.accepted = 0
        self._conns: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        """From now on, drop every byte of every open connection (and of new ones)."""
        self.blackhole = True
        for c in self._conns:
            c["dead"] = True

    async def _accept(self, reader, writer) -> None:
        self.accepted += 1
        conn = {"dead": self.blackhole, "writers": [writer]}
        self._conns.append(conn)
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        conn["writers"].append(uw)
        for src, dst in ((reader, uw), (ur, writer)):
            t = asyncio.create_task(self._pump(src, dst, conn))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, src, dst, conn) -> None:
        try:
            while data := await src.read(65536):
                if not conn["dead"]:
                    dst.write(data)
                    await dst.drain()
        except (OSError, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in self._conns:
            for w in c["writers"]:
                w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_blackholed_connection_replaced_by_fresh_client(plant, caplog):
    """A hung connection (no bytes either way, socket open) is noticed by the watchdog, and
    a fresh Client object connects once the network is back."""
    caplog.set_level(logging.CRITICAL, logger="asyncua")
    await _fill(plant)
    proxy = BlackholeProxy(plant.port)
    await proxy.start()
    link = OpcuaLink(
        f"opc.tcp://127.0.0.1:{proxy.port}/plant/",
        POINTS,
        namespace=NS,
        sampling_interval_s=0.05,
        timeout_s=0.5,
        watchdog_s=0.3,
        backoff_min_s=0.1,
        backoff_max_s=0.4,
    )
    try:
        await link.connect()
        await _until(lambda: _good_and_expected(link))
        first_client = link._client
        proxy.cut()
        await _until(lambda: not link.connected)
        assert all(s.quality is Quality.COMMS_LOST for s in link.read_inputs().values())
        await _until(lambda: link.stats["reconnect_attempts"] >= 2)  # hung attempts time out
        assert not link.connected
        proxy.blackhole = False  # the network is back for new connections
        await _until(lambda: link.connected)
        assert link._client is not first_client
        await plant.set("G1.p_mw", 6.5)
        await _until(lambda: link.read_inputs()["G1.p_mw"].value == 6.5)
        assert _q(link, "G1.p_mw") is Quality.GOOD
    finally:
        await link.close()
        await proxy.close()


def test_output_batch_encodes_floats_as_the_pieces_joined():
    """The Write body assembled with array operations is byte for byte the per-point join
    (heads of different lengths, any subset in any order, with and without a timestamp)."""
    import struct

    from hil.links.opcua import OutputBatch

    rng = np.random.default_rng(5)
    pts = [Point(f"E{i}.x", "x", "x", f"E{i}", "to_field", "measurement") for i in range(40)]
    batch = OutputBatch(pts)
    heads = [bytes(rng.integers(0, 256, int(rng.integers(5, 60)), dtype=np.uint8)) for _ in pts]
    batch.bind(heads, [ua.VariantType.Float] * len(pts))
    for tail in (b"\x00\x00\x00\x00" + bytes(range(8)), b"\x00\x00\x00\x00", b""):
        for size in (0, 1, 7, 40):
            sel = rng.permutation(40)[:size]
            v = rng.normal(0.0, 1e3, size)
            raw = v.astype("<f4").tobytes()
            want = struct.pack("<i", size) + b"".join(
                heads[i] + raw[4 * k : 4 * k + 4] + tail for k, i in enumerate(sel.tolist())
            )
            assert batch.encode_floats(sel, v, tail) == want
