"""The bulk data path (issue 15) against the per-point path it replaces: same values, qualities,
timestamps, listener calls, exceptions and audit records.

- ``PointStore.set_many`` against ``set`` per point (listeners, transform, plant-side faults);
- ``StoreLink.write_batch`` against ``write_outputs`` (deadband, refresh, cut points, limits);
- the Modbus server's cached read plans and encodings against a fresh encoding of every read;
- the OPC UA server's one-request bulk write against the same values written one per request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import numpy as np
import pytest
from asyncua import Client, ua

from hil.emulator import EmulatedSubstation
from hil.errors import OutOfRange, ProtocolError
from hil.field.base import SimClock
from hil.links.modbus import ModbusLink
from hil.links.store import StoreLink
from hil.security.audit import audit_log
from hil.store import PointStore
from twin.pointmap import encode_registers, generate_pointmap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")

PLANT = {"plant": ("plant-pw", "plant")}


@pytest.fixture
def pm(feeder_net):
    return generate_pointmap(feeder_net(), mode="hil")


def _outputs(pm):
    return [p for p in pm.points if p.direction == "to_field"]


def _two_stores(pm):
    out = []
    for _ in range(2):
        clock = SimClock(3.0)
        store = PointStore(pm, clock=clock)
        seen: list = []
        store.subscribe(lambda p, s, src, seen=seen: seen.append((p.name, s, src)))
        out.append((store, clock, seen))
    return out


def test_set_many_is_set_per_point(pm):
    (a, ca, seen_a), (b, cb, seen_b) = _two_stores(pm)
    for store in (a, b):
        store.set_transform(lambda p, v, q, src: v * 2.0 if p.name == "HV.vm_pu" else v)
        store.freeze("MV.vm_pu")
        store.set_offline(["T1.loading_percent"])
    seen_a.clear()
    seen_b.clear()
    items = [(p.name, 0.25 * i) for i, p in enumerate(_outputs(pm))]
    items.append(("T1.p_hv_mw", math.nan))
    for name, v in items:
        a.set(name, v, source="direct")
    b.set_many(items, source="direct")
    assert a.snapshot() == b.snapshot()
    assert seen_a == seen_b
    assert b.get("T1.p_hv_mw").quality is Quality.INVALID
    assert b.get("T1.loading_percent").quality is Quality.COMMS_LOST
    assert a.device_get("MV.vm_pu") == b.device_get("MV.vm_pu")
    # a device's own writes skip the transform in both
    a.set("HV.vm_pu", 1.0, source="device:T1")
    b.set_many([("HV.vm_pu", 1.0)], source="device:T1")
    assert a.get("HV.vm_pu") == b.get("HV.vm_pu")
    assert b.get("HV.vm_pu").value == 1.0
    # an explicit timestamp for the whole batch
    b.set_many([("HV.vm_pu", 1.01)], source="opcua", timestamp=99.0)
    assert b.get("HV.vm_pu").timestamp == 99.0


def test_set_many_unknown_point_sets_the_ones_before(pm):
    store = PointStore(pm, clock=SimClock(0.0))
    with pytest.raises(Exception, match="no point named 'X.nope'"):
        store.set_many([("HV.vm_pu", 1.02), ("X.nope", 1.0)])
    assert store.get("HV.vm_pu").value == 1.02


async def test_store_link_batch_matches_write_outputs(pm):
    outs = [p for p in _outputs(pm) if p.kind == "measurement"]
    names = [p.name for p in outs]
    (a, ca, seen_a), (b, cb, seen_b) = _two_stores(pm)
    la = StoreLink(a, pm.points, clock=ca)
    lb = StoreLink(b, pm.points, clock=cb)
    batch = lb.prepare_outputs(names)
    rng = np.random.default_rng(5)
    base = rng.uniform(0.5, 1.5, len(names))
    for step in range(8):
        for c in (ca, cb):
            c.t = 3.0 + 0.4 * step  # some refreshes fall due (interval_s 1 s)
        vals = base + rng.choice([0.0, 1e-6, 0.05], len(names))  # inside and outside deadbands
        mask = rng.random(len(names)) > 0.2
        if step == 4:
            la.cut([names[0]])
            lb.cut([names[0]])
        await la.write_outputs({n: v for n, v, k in zip(names, vals.tolist(), mask) if k})
        await lb.write_batch(batch, vals, mask)
        assert a.snapshot() == b.snapshot(), step
    assert seen_a == seen_b
    assert la.stats["writes"] == lb.stats["writes"]
    # a value outside its limits: refused before anything is written, as write_outputs does
    lim = [p for p in _outputs(pm) if p.high is not None and p.kind != "measurement"][0]
    batch2 = lb.prepare_outputs([lim.name, names[1]])
    before = b.snapshot()
    with pytest.raises(OutOfRange):
        await lb.write_batch(batch2, np.array([lim.high + 1.0, 7.0]))
    assert b.snapshot() == before
    with pytest.raises(Exception, match="expected a to_field point"):
        lb.prepare_outputs(["Q1.closed"])


async def test_modbus_reads_follow_every_change(feeder_net, pm):
    """The server's cached encodings and the link's cached decodings never serve an old value:
    every read after a change (value, quality, fault) gives what a fresh encoding gives."""
    net = feeder_net()
    async with EmulatedSubstation(net, pm, protocols=("modbus",)) as sub:
        link = ModbusLink("127.0.0.1", sub.modbus_port, pm.points)
        async with link:
            inputs = [
                p for p in link.inputs if p.modbus.table in ("input_register", "holding_register")
            ]
            assert inputs
            p = inputs[0]
            for k, v in enumerate([1.0, 2.0, 2.0, 0.0, 3.0]):
                sub.store.set(p.name, v, source="device:test")
                await link.poll()
                s = link.read_inputs()[p.name]
                assert s.quality is Quality.GOOD and s.value == pytest.approx(v), k
                ctx = sub.modbus.context
                fc = 3 if p.modbus.table == "holding_register" else 4
                regs = await ctx.async_getValues(
                    p.modbus.unit, fc, p.modbus.address, p.modbus.count
                )
                assert list(regs) == encode_registers(p, sub.store.get(p.name).value)
            sub.store.set(p.name, math.nan, quality=Quality.INVALID, source="device:test")
            with contextlib.suppress(ProtocolError):  # 04, or the not-available sentinel
                await link.poll()
            assert link.read_inputs()[p.name].quality is Quality.INVALID
            sub.store.set(p.name, 4.0, source="device:test")
            await link.poll()
            assert link.read_inputs()[p.name].value == pytest.approx(4.0)


def _audit_rows(sub):
    rows = []
    for r in audit_log(sub.store).records():
        d = dataclasses.asdict(r)
        d.pop("time", None)
        d.pop("peer", None)
        rows.append(json.dumps(d, sort_keys=True, default=str))
    return rows


async def test_opcua_bulk_write_equals_one_by_one(feeder_net, pm):
    """One Write request of many values (the plant's step) gives the same statuses, store
    contents and audit records as the same values written one per request."""
    wanted = {"T1.loading_percent": 55.5, "HV.vm_pu": 1.01, "MV.vm_pu": math.nan,
              "T1.avr_vset_pu": 1.5, "T1.avr_auto": 1.0, "Q1.cmd": 1.0}  # fmt: skip
    results = []
    for bulk in (False, True):
        net = feeder_net()
        async with EmulatedSubstation(net, pm, protocols=("opcua",), users=PLANT) as sub:
            skip = len(audit_log(sub.store).records())
            client = Client(sub.opcua_endpoint, timeout=10)
            client.set_user("plant")
            client.set_password("plant-pw")
            async with client:
                ns = await client.get_namespace_index(pm.namespace)
                wvs = []
                for name, v in wanted.items():
                    p = pm[name]
                    nid = ua.NodeId.from_string(p.opcua.node_id)
                    nid = ua.NodeId(nid.Identifier, ns, nid.NodeIdType)
                    vt = sub.opcua._vtype[name]
                    val = (
                        bool(v)
                        if vt == ua.VariantType.Boolean
                        else (
                            int(v) if vt not in (ua.VariantType.Float, ua.VariantType.Double) else v
                        )
                    )
                    dv = ua.DataValue(ua.Variant(val, vt))
                    if isinstance(v, float) and math.isnan(v):
                        dv = ua.DataValue(
                            ua.Variant(val, vt),
                            StatusCode=ua.StatusCode(ua.StatusCodes.BadSensorFailure),
                        )
                    wvs.append(
                        ua.WriteValue(NodeId=nid, AttributeId=ua.AttributeIds.Value, Value=dv)
                    )
                if bulk:
                    statuses = await client.uaclient.write_attributes(
                        [w.NodeId for w in wvs], [w.Value for w in wvs], ua.AttributeIds.Value
                    )
                else:
                    statuses = []
                    for w in wvs:
                        statuses += await client.uaclient.write_attributes(
                            [w.NodeId], [w.Value], ua.AttributeIds.Value
                        )
            snap = {n: (s.value, s.quality) for n, s in sub.store.snapshot().items()
                    if n in wanted}  # fmt: skip
            results.append(([s.value for s in statuses], snap, _audit_rows(sub)[skip:]))
    (st_a, snap_a, audit_a), (st_b, snap_b, audit_b) = results
    assert st_a == st_b
    assert ua.StatusCodes.BadOutOfRange in st_b  # 1.5 pu set point refused
    assert str(snap_a) == str(snap_b)  # NaN-safe comparison
    assert snap_b["MV.vm_pu"][1] is Quality.INVALID  # the plant's "not available"
    assert audit_a == audit_b
    assert len(audit_b) == len(wanted)
