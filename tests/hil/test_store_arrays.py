"""The point store on arrays (issue 15): the bulk path against the per-point path.

- ``PointStore.set_array`` against ``set`` per point and against the reference path
  (``bulk=False``): values, qualities, timestamps, listener calls, faults, the transform,
  exceptions;
- batch listeners, Sample identity (unchanged point: the same object), versions, read-only arrays;
- ``twin.pointmap.BlockCodec`` against ``encode_registers`` / ``decode_registers`` word for word
  (every dtype, word order, scale, offset, sentinel; values that do not fit);
- the Modbus server's block-encoded reads against its per-point reference, directly and over a
  real loopback socket with pymodbus's client;
- a bundled scenario run with the bulk path on and off: the same results folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.emulator.modbus_server import StoreContext
from hil.errors import UnknownPoint
from hil.field.base import SimClock
from hil.store import QUALITY_CODE, PointStore
from twin.pointmap import (
    BLOCK_WIDTH,
    BlockCodec,
    ModbusBinding,
    Point,
    PointMap,
    RegisterValueError,
    decode_registers,
    encode_registers,
    generate_pointmap,
)
from twin.quality import Quality, Sample

pytestmark = pytest.mark.usefixtures("no_task_leak")


@pytest.fixture
def pm(feeder_net):
    return generate_pointmap(feeder_net(), mode="hil")


def _stores(pm, n=2, **kw):
    out = []
    for _ in range(n):
        clock = SimClock(3.0)
        store = PointStore(pm, clock=clock, **kw)
        seen: list = []
        store.subscribe(lambda p, s, src, seen=seen: seen.append((p.name, s, src)))
        out.append((store, clock, seen))
    return out


def _faults(store):
    store.set_transform(lambda p, v, q, src: v * 2.0 if p.name == "HV.vm_pu" else v)
    store.freeze("MV.vm_pu")
    store.set_offline(["T1.loading_percent"])


def _state(store):
    return (
        store.snapshot(),
        {n: store.device_get(n) for n in store.names},
        store.faults,
        store.values.tobytes(),
        store.qualities.tobytes(),
        store.timestamps.tobytes(),
    )


def test_set_array_is_set_per_point(pm):
    (a, _, seen_a), (b, _, seen_b), (c, _, seen_c) = _stores(pm, 2) + _stores(pm, 1, bulk=False)
    for store in (a, b, c):
        _faults(store)
    for seen in (seen_a, seen_b, seen_c):
        seen.clear()
    names = [p.name for p in pm.points if p.direction == "to_field"]
    vals = [0.25 * i for i in range(len(names))]
    vals[3] = math.nan
    vals[4] = math.inf
    for n, v in zip(names, vals):
        a.set(n, v, source="direct")
    b.set_array(b.positions(names), np.array(vals), source="direct")
    c.set_array(c.positions(names), np.array(vals), source="direct")
    assert _state(a) == _state(b) == _state(c)
    assert seen_a == seen_b == seen_c
    assert b.get(names[3]).quality is Quality.INVALID
    assert b.get(names[4]).quality is Quality.INVALID
    assert b.get("T1.loading_percent").quality is Quality.COMMS_LOST
    assert b.get("MV.vm_pu").timestamp == 3.0  # frozen: the value and time stop
    # a device's own writes skip the transform; qualities per position
    pos = b.positions(["HV.vm_pu", "T1.p_hv_mw"])
    q = np.array([QUALITY_CODE[Quality.STALE], QUALITY_CODE[Quality.GOOD]], dtype=np.uint8)
    b.set_array(pos, [1.0, 2.0], source="device:T1", quality=q, timestamp=9.0)
    a.set("HV.vm_pu", 1.0, quality=Quality.STALE, source="device:T1", timestamp=9.0)
    a.set("T1.p_hv_mw", 2.0, source="device:T1", timestamp=9.0)
    assert _state(a) == _state(b)
    # faults released: the device's latest values come back, the same in both
    for store in (a, b):
        store.freeze("MV.vm_pu", False)
        store.set_offline(["T1.loading_percent"], False)
    assert _state(a) == _state(b)
    assert seen_a == seen_b


def test_set_many_twice_the_same_point_is_set_twice(pm):
    (a, _, seen_a), (b, _, seen_b) = _stores(pm)
    items = [("HV.vm_pu", 1.0), ("MV.vm_pu", 2.0), ("HV.vm_pu", 3.0)]
    for n, v in items:
        a.set(n, v)
    b.set_many(items)
    assert seen_a == seen_b
    assert [s.value for n, s, _ in seen_b if n == "HV.vm_pu"] == [1.0, 3.0]


def test_set_many_bad_value_sets_the_ones_before(pm):
    store = PointStore(pm, clock=SimClock(0.0))
    with pytest.raises(TypeError):
        store.set_many([("HV.vm_pu", 1.02), ("MV.vm_pu", None)])  # type: ignore[list-item]
    assert store.get("HV.vm_pu").value == 1.02
    assert store.get("MV.vm_pu").quality is Quality.INVALID  # never set


def test_set_array_bad_input_sets_nothing(pm):
    store = PointStore(pm, clock=SimClock(0.0))
    before = _state(store)
    with pytest.raises(UnknownPoint, match="no point at position 999"):
        store.set_array(np.array([0, 999]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="expected one value per position"):
        store.set_array(np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ValueError, match="expected one quality per position"):
        store.set_array(np.array([0, 1]), np.array([1.0, 2.0]), quality=np.array([0]))
    with pytest.raises(UnknownPoint, match="no point named 'X.nope'"):
        store.positions(["HV.vm_pu", "X.nope"])
    assert _state(store) == before
    store.set_array(np.array([], dtype=np.intp), np.array([]))  # nothing: no call, no change
    assert store.epoch == 0


def test_batch_listeners_one_call_per_write(pm):
    store = PointStore(pm, clock=SimClock(1.0))
    calls: list = []
    unsubscribe = store.subscribe_batch(lambda pos, src: calls.append((pos.tolist(), src)))
    names = [p.name for p in pm.points][:5]
    pos = store.positions(names)
    store.set_array(pos, np.arange(5.0), source="plant")
    store.set_many([(names[0], 7.0), (names[1], 8.0)], source="opcua")
    store.set(names[2], 9.0, source="device:x")
    store.freeze(names[3])
    assert calls == [
        (pos.tolist(), "plant"),
        (pos[:2].tolist(), "opcua"),
        ([int(pos[2])], "device:x"),
        ([int(pos[3])], "fault"),
    ]
    unsubscribe()
    store.set(names[0], 1.0)
    assert len(calls) == 4


def test_a_failing_listener_does_not_break_the_writer(pm):
    store = PointStore(pm, clock=SimClock(1.0))

    def boom(*a):
        raise RuntimeError("listener bug")

    store.subscribe(boom)
    store.subscribe_batch(boom)
    store.set_array(store.positions(["HV.vm_pu"]), [1.05])
    assert store.get("HV.vm_pu").value == 1.05


def test_samples_kept_until_the_point_changes(pm):
    store = PointStore(pm, clock=SimClock(1.0))
    pos = store.positions(["HV.vm_pu", "MV.vm_pu"])
    store.set_array(pos, [1.0, 1.0])
    s = store.get("HV.vm_pu")
    assert store.get("HV.vm_pu") is s and store.device_get("HV.vm_pu") is s
    v0 = store.versions[pos].copy()
    store.set_array(pos[1:], [1.0])  # the other point changed: this one's Sample stays
    assert store.get("HV.vm_pu") is s
    assert store.versions[pos[0]] == v0[0] and store.versions[pos[1]] > v0[1]
    store.set_array(pos[:1], [1.0])  # the same value written again is a new sample
    assert store.get("HV.vm_pu") is not s and store.get("HV.vm_pu") == s
    with pytest.raises(ValueError):
        store.values[0] = 5.0  # the arrays are read-only views
    assert store.value("HV.vm_pu") == 1.0 and store.point_at(int(pos[0])).name == "HV.vm_pu"


def test_bulk_off_by_environment(pm, monkeypatch):
    monkeypatch.setenv("GRIDTWIN_BULK", "0")
    assert PointStore(pm).bulk is False
    monkeypatch.setenv("GRIDTWIN_BULK", "1")
    assert PointStore(pm).bulk is True


# --- the block codec ---------------------------------------------------------------------------
_DTYPES = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64")


def _mb_point(k, dtype, order, scale, offset, na):
    return Point(
        f"P{k}",
        "bus",
        "vm_pu",
        k,
        "to_field",
        "measurement",
        modbus=ModbusBinding(1, "holding_register", 4 * k, dtype, order, scale, offset, na),
    )


_point_specs = st.tuples(
    st.sampled_from(_DTYPES),
    st.sampled_from(("big", "little")),
    st.sampled_from((1.0, 0.001, 0.1, 10.0, -2.0)),
    st.sampled_from((0.0, -5.0, 100.0)),
    st.sampled_from((None, 0x7FFF, -1, 0, 1, 65535, math.nan, -9999.0)),
)
_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e5, 1e5),
    st.integers(-70000, 70000).map(float),
    st.sampled_from((0.0, -0.0, 0.5, 1.5, 2.5, -0.5, 32767.0, 32767.5, 3.5e38, 4e9)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_point_specs, _values), min_size=1, max_size=12))
def test_block_codec_encodes_as_encode_registers(cases):
    points = [_mb_point(k, *spec) for k, (spec, _) in enumerate(cases)]
    values = np.array([v for _, v in cases])
    codec = BlockCodec(points)
    words, fits = codec.encode(values)
    assert words.shape == (len(points), BLOCK_WIDTH)
    for k, p in enumerate(points):
        try:
            want = encode_registers(p, values[k])
        except RegisterValueError:
            assert not fits[k], (p.modbus, values[k])
            continue
        assert fits[k], (p.modbus, values[k])
        assert words[k, : len(want)].tolist() == want, (p.modbus, values[k])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(_point_specs, st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4)),
        min_size=1,
        max_size=12,
    )
)
def test_block_codec_decodes_as_decode_registers(cases):
    points = [_mb_point(k, *spec) for k, (spec, _) in enumerate(cases)]
    codec = BlockCodec(points)
    rows = np.array([r for _, r in cases], dtype=np.int64)
    got = codec.decode(rows)
    for k, p in enumerate(points):
        want = decode_registers(p, rows[k, : codec.count[k]].tolist())
        assert (math.isnan(want) and math.isnan(got[k])) or got[k] == want, (p.modbus, rows[k])
    # a subset, in any order, gives the same as the whole
    idx = np.arange(len(points))[::-1]
    sub = codec.decode(rows[::-1], idx)
    assert np.array_equal(sub, got[::-1], equal_nan=True)


def test_block_codec_refuses_registers_out_of_range():
    p = _mb_point(0, "int32", "big", 1.0, 0.0, None)
    with pytest.raises(RegisterValueError, match="registers in 0..65535"):
        BlockCodec([p]).decode(np.array([[1, 70000, 0, 0]]))
    with pytest.raises(RegisterValueError, match="Modbus binding"):
        BlockCodec([Point("X", "bus", "vm_pu", 0, "to_field", "measurement")])


# --- the Modbus server's reads -----------------------------------------------------------------
async def _read_all(ctx: StoreContext, pm) -> list:
    out = []
    fcs = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
    for p in pm.points:
        mb = p.modbus
        if mb is None:
            continue
        fc = fcs[mb.table]
        out.append((p.name, await ctx.async_getValues(mb.unit, fc, mb.address, mb.count)))
        # a read spanning this point and the next addresses (some unmapped: 02)
        out.append((p.name, await ctx.async_getValues(mb.unit, fc, mb.address, mb.count + 3)))
        if mb.count > 1:  # a read starting inside a point
            out.append((p.name, await ctx.async_getValues(mb.unit, fc, mb.address + 1, 1)))
    return out


async def test_block_reads_equal_per_point_reads(pm):
    rng = np.random.default_rng(3)
    stores = [PointStore(pm, clock=SimClock(1.0), bulk=b) for b in (True, False)]
    ctxs = [StoreContext(s, role="plant") for s in stores]
    assert ctxs[0].block and not ctxs[1].block
    names = list(stores[0].names)
    for round_ in range(12):
        k = rng.integers(1, len(names))
        chosen = list(rng.choice(names, size=k, replace=False))
        vals = rng.choice([0.0, 1.0, 1.02, -3.5, 250.0, 4e4, 1e12, math.nan], size=k)
        quality = rng.choice([0, 0, 0, 1, 2, 3], size=k).astype(np.uint8)
        for s in stores:
            s.set_array(s.positions(chosen), vals, quality=quality, source="device:t")
            if round_ == 5:
                s.freeze(names[2])
                s.set_offline(names[3:5])
        got = [await _read_all(c, pm) for c in ctxs]
        assert got[0] == got[1], round_


async def test_block_reads_over_a_loopback_socket(feeder_net, pm):
    """pymodbus's client reads every register table after bulk writes: what it gets is the
    per-point encoding of the store's current samples."""
    from pymodbus.client import AsyncModbusTcpClient

    from hil.emulator import EmulatedSubstation

    net = feeder_net()
    async with EmulatedSubstation(net, pm, protocols=("modbus",)) as sub:
        client = AsyncModbusTcpClient("127.0.0.1", port=sub.modbus_port, timeout=5, retries=0)
        await client.connect()
        try:
            store = sub.store
            regs = [
                p
                for p in pm.points
                if p.modbus is not None
                and p.modbus.table in ("input_register", "holding_register")
                and p.modbus.dtype != "bool"
            ]
            assert regs
            rng = np.random.default_rng(11)
            for step in range(4):
                vals = rng.uniform(0.0, 50.0, len(regs)).round(3)
                store.set_array(store.positions([p.name for p in regs]), vals, source="device:t")
                for p in regs:
                    mb = p.modbus
                    read = (
                        client.read_holding_registers
                        if mb.table == "holding_register"
                        else client.read_input_registers
                    )
                    rr = await read(mb.address, count=mb.count, device_id=mb.unit)
                    assert not rr.isError(), (step, p.name, rr)
                    assert rr.registers == encode_registers(p, store.get(p.name).value)
        finally:
            client.close()


def test_city_scenario_same_results_with_bulk_on_and_off(tmp_path: Path, monkeypatch):
    """A bundled scenario over Modbus and the direct link: the results folder (time series,
    events, alarms, audit, checks, summary counts) is the same with the bulk path off."""
    compare_folders = _compare_folders()
    from scenarios.engine import run_scenario

    lib = Path(__file__).resolve().parents[2] / "scenarios" / "library"
    for flag in ("1", "0"):
        monkeypatch.setenv("GRIDTWIN_BULK", flag)
        res = run_scenario(lib / "relay_trip_modbus.toml", out_dir=tmp_path / flag)
        assert not res.error, res.error
    assert compare_folders(tmp_path / "1", tmp_path / "0") == []


def test_compare_folders_sees_a_difference(tmp_path: Path):
    compare_folders = _compare_folders()

    for name, text in (("a", "x"), ("b", "y")):
        d = tmp_path / name
        d.mkdir()
        (d / "events.csv").write_text(f"time_s,kind\n0,{text}\n")
    assert compare_folders(tmp_path / "a", tmp_path / "b")
    assert compare_folders(tmp_path / "a", tmp_path / "a") == []


def test_sample_type_unchanged(pm):
    s = PointStore(pm, clock=SimClock(2.0))
    s.set_array(s.positions(["HV.vm_pu"]), np.array([1.25]))
    got = s.get("HV.vm_pu")
    assert isinstance(got, Sample) and type(got.value) is float and type(got.timestamp) is float


async def test_read_answers_from_the_image_are_pymodbus_bytes(feeder_net, pm):
    """The server's read fast path (FC1-4 answered from the register image) gives the same
    response PDU bytes as pymodbus's own request/response objects over the per-point read,
    for mapped, partly unmapped and not-served reads."""
    from hil.emulator.modbus_server import Caller, ModbusServer

    store = PointStore(pm, clock=SimClock(1.0))
    server = ModbusServer(store, port=0, role="plant")
    view = server.context.view(Caller(peer="127.0.0.1:1"))
    rng = np.random.default_rng(5)
    names = list(store.names)
    fcs = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
    mapped = [p.modbus for p in pm.points if p.modbus is not None]
    for round_ in range(6):
        k = int(rng.integers(1, len(names)))
        chosen = list(rng.choice(names, size=k, replace=False))
        vals = rng.choice([0.0, 1.0, 1.02, 250.0, 4e4, math.nan], size=k)
        q = rng.choice([0, 0, 0, 2, 3], size=k).astype(np.uint8)
        store.set_array(store.positions(chosen), vals, quality=q, source="device:t")
        for mb in mapped:
            for count in (mb.count, mb.count + 2, 1):
                pdu = (
                    bytes([fcs[mb.table]])
                    + mb.address.to_bytes(2, "big")
                    + count.to_bytes(2, "big")
                )
                server.context.block = True
                fast = await server._answer(mb.unit, pdu, view)
                server.context.block = False
                slow = await server._answer(mb.unit, pdu, view)
                assert fast == slow, (round_, mb, count)
    server.context.block = True


def test_overlapping_modbus_points_are_refused():
    from hil.errors import HilError

    a = _mb_point(0, "float32", "big", 1.0, 0.0, None)  # holding registers 0-1
    b = Point("B", "bus", "vm_pu", 1, "to_field", "measurement",
              modbus=ModbusBinding(1, "holding_register", 1, "int16"))  # fmt: skip
    store = PointStore(PointMap((a, b)), clock=SimClock(0.0))
    with pytest.raises(HilError, match="address 1: expected one point, found 'P0' and 'B'"):
        StoreContext(store)


def _compare_folders():
    """bench/data_path.py's comparison, loaded from the checkout (bench/ is not installed)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "data_path.py"
    spec = importlib.util.spec_from_file_location("gridtwin_bench_data_path", path)
    assert spec is not None and spec.loader is not None, path
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compare_folders
