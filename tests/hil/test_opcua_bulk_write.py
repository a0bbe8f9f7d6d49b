"""Issue 15: the emulator's Write requests in bulk, and their audit as one record per request.

- :func:`hil.opcua_write.decode_nodes_to_write` decodes what asyncua encodes exactly as asyncua
  decodes it, and declines (None) every shape it does not take;
- the plant's step through :class:`hil.links.opcua.OpcuaLink` is served in bulk (one pass, one
  ``set_many``) with the same store contents as asyncua's path, and audited as one group record
  that :meth:`AuditLog.records` and :func:`read_audit` give back one per value;
- a refused value in the middle of a request is its own record, in request order;
- the audit buffer past its bound is cut in one pass, refused records kept.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.ua.ua_binary import nodeid_to_binary, struct_from_binary, struct_to_binary

from hil.emulator import EmulatedSubstation
from hil.links.opcua import OpcuaLink
from hil.opcua_write import decode_nodes_to_write
from hil.security.audit import ACCEPTED, REFUSED, AuditLog, audit_log, read_audit
from twin.pointmap import generate_pointmap

pytestmark = pytest.mark.usefixtures("no_task_leak")

PLANT = {"plant": ("plant-pw", "plant")}
TS = datetime(2026, 12, 2, 7, 0, 0, 123456, tzinfo=UTC)


def _body(values: list[ua.WriteValue]) -> bytes:
    """The NodesToWrite bytes of a WriteRequest as asyncua's client encodes them."""
    return struct_to_binary(ua.WriteParameters(NodesToWrite=values))


def _wv(nid: ua.NodeId, dv: ua.DataValue, **kw) -> ua.WriteValue:
    return ua.WriteValue(NodeId=nid, AttributeId=ua.AttributeIds.Value, Value=dv, **kw)


PLAIN = [
    (ua.NodeId("SS1/BAY_L1/L1/p_from_mw", 2), ua.Variant(1.5, ua.VariantType.Double), None, TS),
    (ua.NodeId("a", 3), ua.Variant(0.25, ua.VariantType.Float), ua.StatusCodes.Good, None),
    (ua.NodeId(17, 2), ua.Variant(True, ua.VariantType.Boolean), None, None),
    (ua.NodeId(5, 0), ua.Variant(-7, ua.VariantType.Int16), ua.StatusCodes.BadSensorFailure, TS),
    (ua.NodeId(70000, 1), ua.Variant(2**31 + 5, ua.VariantType.UInt32), None, TS),
    (ua.NodeId(b"\x01\x02", 2), ua.Variant(-(2**40), ua.VariantType.Int64), None, None),
    (ua.NodeId("ü-ß", 2), ua.Variant(math.nan, ua.VariantType.Double), None, None),
]


def test_decoder_matches_asyncua_on_the_plain_shape():
    wvs = []
    for nid, var, status, ts in PLAIN:
        code = ua.StatusCode(status) if status is not None else None
        wvs.append(_wv(nid, ua.DataValue(var, StatusCode=code, SourceTimestamp=ts)))
    data = b"\xff\xfe" + _body(wvs)  # at an offset, as inside a message body
    got = decode_nodes_to_write(data, 2)
    assert got is not None
    from asyncua.common.utils import Buffer

    ref = struct_from_binary(ua.WriteParameters, Buffer(data[2:])).NodesToWrite
    assert got.keys == [nodeid_to_binary(w.NodeId) for w in ref]
    for k, w in enumerate(ref):
        v = w.Value.Value.Value
        assert type(got.values[k]) is type(v), k
        assert got.values[k] == v or (math.isnan(v) and math.isnan(got.values[k])), k
        sc = w.Value.StatusCode
        assert got.statuses[k] == (sc.value if sc is not None else 0), k
        if w.Value.SourceTimestamp is None:
            assert got.ticks[k] is None
        else:
            assert ua.win_epoch_to_datetime(got.ticks[k]) == w.Value.SourceTimestamp


@pytest.mark.parametrize(
    "wv",
    [
        ua.WriteValue(
            NodeId=ua.NodeId("x", 2),
            AttributeId=ua.AttributeIds.Description,
            Value=ua.DataValue(ua.Variant(ua.LocalizedText("d"))),
        ),
        _wv(ua.NodeId("x", 2), ua.DataValue(ua.Variant(1.0)), IndexRange="0:1"),
        _wv(ua.NodeId("x", 2), ua.DataValue(ua.Variant([1.0, 2.0], ua.VariantType.Double))),
        _wv(ua.NodeId("x", 2), ua.DataValue(ua.Variant("1.5", ua.VariantType.String))),
        _wv(ua.NodeId("x", 2), ua.DataValue(ua.Variant(1.0), ServerTimestamp=TS)),
        _wv(ua.NodeId("x", 2), ua.DataValue(None)),
    ],
    ids=["attribute", "index-range", "array", "string", "server-timestamp", "no-value"],
)
def test_decoder_declines_what_it_does_not_take(wv):
    plain = _wv(ua.NodeId("y", 2), ua.DataValue(ua.Variant(1.0)))
    assert decode_nodes_to_write(_body([plain, plain])) is not None
    assert decode_nodes_to_write(_body([plain, wv])) is None


def _ref(data: bytes) -> list[tuple[bytes, object, int, datetime | None]]:
    from asyncua.common.utils import Buffer

    out = []
    for w in struct_from_binary(ua.WriteParameters, Buffer(data)).NodesToWrite:
        sc = w.Value.StatusCode
        out.append((nodeid_to_binary(w.NodeId), w.Value.Value.Value,
                    sc.value if sc is not None else 0, w.Value.SourceTimestamp))  # fmt: skip
    return out


def _got(data: bytes) -> list[tuple[bytes, object, int, datetime | None]]:
    got = decode_nodes_to_write(data)
    assert got is not None
    return [(k, v, s, None if t is None else ua.win_epoch_to_datetime(t))
            for k, v, s, t in zip(got.keys, got.values, got.statuses, got.ticks)]  # fmt: skip


def test_a_repeated_layout_decodes_the_same_as_asyncua():
    """The plant's step repeats one node sequence: the array path (a layout of the first
    request) gives what asyncua decodes, and a request differing in any other byte (a node
    id, the status mask) is decoded afresh."""

    def request(step: int, name: str = "x", status: bool = False) -> bytes:
        wvs = []
        for i in range(40):
            code = ua.StatusCode(ua.StatusCodes.BadSensorFailure if i == 3 else 0)
            ts = datetime(2026, 12, 2, 7, step, tzinfo=UTC)
            var = ua.Variant(0.5 * i + step, ua.VariantType.Float)
            dv = ua.DataValue(var, StatusCode=code if status else None, SourceTimestamp=ts)
            wvs.append(_wv(ua.NodeId(f"SS1/{name}{i:02d}/vm_pu", 2), dv))
        return _body(wvs)

    for data in (request(1), request(2), request(3, name="y"), request(4, status=True),
                 request(5, status=True), request(6)):  # fmt: skip
        assert _got(data) == _ref(data)
    # not uniform past the first value: a Double, a numeric node id, a shorter name
    dv = ua.DataValue(ua.Variant(2.5, ua.VariantType.Float), SourceTimestamp=TS)
    odd = [
        _wv(ua.NodeId("SS1/z/vm_pu", 2), ua.DataValue(ua.Variant(2.5, ua.VariantType.Double))),
        _wv(ua.NodeId(99, 2), dv),
        _wv(ua.NodeId("s", 2), dv),
    ]
    for k, w in enumerate(odd):
        wvs = [_wv(ua.NodeId(f"SS1/a{i:02d}/vm_pu", 2), dv) for i in range(30)]
        wvs.insert(10 + k, w)
        data = _body(wvs)
        for _ in range(3):  # new, seen, layout
            assert _got(data) == _ref(data)


def test_decoder_declines_cut_or_empty_bytes():
    body = _body([_wv(ua.NodeId("y", 2), ua.DataValue(ua.Variant(1.0), SourceTimestamp=TS))] * 3)
    assert decode_nodes_to_write(body) is not None
    for cut in (1, 5, 9, len(body) - 20):
        assert decode_nodes_to_write(body[:-cut]) is None, cut
    assert decode_nodes_to_write(_body([])) is None
    assert decode_nodes_to_write(b"") is None


@pytest.fixture
def pm(feeder_net):
    return generate_pointmap(feeder_net(), mode="hil")


async def test_the_plant_step_is_served_in_bulk_and_audited_once(feeder_net, pm, tmp_path):
    outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
    async with EmulatedSubstation(feeder_net(), pm, protocols=("opcua",), users=PLANT) as sub:
        log = audit_log(sub.store)
        skip = len(log.records(expand=False))
        link = OpcuaLink(sub.opcua_endpoint, outputs, user="plant", password="plant-pw",
                         namespace=pm.namespace, timeout_s=10.0)  # fmt: skip
        await link.connect()
        try:
            batch = link.prepare_outputs([p.name for p in outputs])
            vals = np.array([p.low if p.low is not None else 0.0 for p in outputs]) + 0.5
            olds = [sub.store.value(p.name) for p in outputs]
            before = sub.opcua.bulk_writes
            assert await link.write_batch(batch, vals) == len(outputs)
            assert sub.opcua.bulk_writes == before + 1
            assert sub.opcua.bulk_values >= len(outputs)
        finally:
            await link.close()
        for p, v in zip(outputs, vals):
            s = sub.store.get(p.name)
            assert s.value == pytest.approx(v, rel=1e-6), p.name  # float32 on the wire
            assert s.quality.is_good, p.name
        raw = log.records(expand=False)[skip:]
        assert len(raw) == 1
        group = raw[0]
        assert group.result == ACCEPTED and group.role == "plant" and group.count == len(outputs)
        assert group.point == f"({len(outputs)} points)" and group.user.startswith("plant")
        assert group.peer.startswith("127.0.0.1:")
        assert list(group.points) == [p.name for p in outputs]
        assert list(group.olds) == olds
        per_value = log.records()[-len(outputs) :]
        assert [r.point for r in per_value] == [p.name for p in outputs]
        assert all(r.peer == group.peer and r.result == ACCEPTED for r in per_value)
        # the file form: one line, read back one dict per value
        path = log.stream_to(tmp_path / "audit.jsonl")
        log.close()
        lines = read_audit(path, expand=False)
        assert lines[-1]["count"] == len(outputs) and lines[-1]["points"][0] == outputs[0].name
        dicts = read_audit(path)[-len(outputs) :]
        assert [d["point"] for d in dicts] == [p.name for p in outputs]
        assert [d["new"] for d in dicts] == pytest.approx(list(group.news))


async def test_a_refused_value_splits_the_group_in_request_order(feeder_net, pm):
    names = ["HV.vm_pu", "T1.avr_vset_pu", "MV.vm_pu", "T1.loading_percent"]
    wanted = {"HV.vm_pu": 1.01, "T1.avr_vset_pu": 1.5, "MV.vm_pu": 0.99,
              "T1.loading_percent": 40.0}  # fmt: skip
    async with EmulatedSubstation(feeder_net(), pm, protocols=("opcua",), users=PLANT) as sub:
        log = audit_log(sub.store)
        skip = len(log.records(expand=False))
        skip_values = len(log.records())
        client = Client(sub.opcua_endpoint, timeout=10)
        client.set_user("plant")
        client.set_password("plant-pw")
        async with client:
            ns = await client.get_namespace_index(pm.namespace)
            nids, dvs = [], []
            for n in names:
                nid = ua.NodeId.from_string(pm[n].opcua.node_id)
                nids.append(ua.NodeId(nid.Identifier, ns, nid.NodeIdType))
                vt = sub.opcua._vtype[n]
                dvs.append(ua.DataValue(ua.Variant(wanted[n], vt)))
            before = sub.opcua.bulk_writes
            codes = await client.uaclient.write_attributes(nids, dvs, ua.AttributeIds.Value)
            assert sub.opcua.bulk_writes == before + 1
            # a node that is no point: asyncua's path, node by node, the same answers
            unknown = ua.NodeId("SS1/nowhere", ns)
            more = await client.uaclient.write_attributes(
                [nids[0], unknown], [ua.DataValue(ua.Variant(1.02, ua.VariantType.Float)),
                                     dvs[0]], ua.AttributeIds.Value
            )  # fmt: skip
            assert [c.value for c in more] == [ua.StatusCodes.Good, ua.StatusCodes.BadNodeIdUnknown]
            assert sub.opcua.bulk_writes == before + 1
            assert sub.store.value("HV.vm_pu") == pytest.approx(1.02)
    assert [c.value for c in codes] == [
        ua.StatusCodes.Good,
        ua.StatusCodes.BadOutOfRange,  # a 1.5 pu set point
        ua.StatusCodes.Good,
        ua.StatusCodes.Good,
    ]
    raw = log.records(expand=False)[skip:]
    assert [(r.result, r.count) for r in raw][:3] == [(ACCEPTED, 1), (REFUSED, 1), (ACCEPTED, 2)]
    assert raw[1].point == "T1.avr_vset_pu" and raw[1].new == 1.5 and raw[1].reason
    assert [r.point for r in log.records()[skip_values:][:4]] == names
    assert sub.store.value("T1.loading_percent") == pytest.approx(40.0)
    assert sub.store.value("T1.avr_vset_pu") != 1.5


def test_audit_buffer_past_its_bound_is_cut_in_one_pass():
    log = AuditLog(max_buffer=100)
    log.record(protocol="opcua", peer="p", user="u", point="r", old=0.0, new=9.0,
               result=REFUSED, reason="why")  # fmt: skip
    sizes = []
    for i in range(300):
        log.record(protocol="opcua", peer="p", user="u", point=f"a{i}", old=0.0, new=1.0,
                   result=ACCEPTED)  # fmt: skip
        sizes.append(len(log.records(expand=False)))
    assert max(sizes) <= 100
    assert min(sizes[100:]) <= 90  # cut to 90 %, not by one record at a time
    kept = log.records()
    assert kept[0].point == "r" and kept[-1].point == "a299"
    assert log.dropped + len(kept) == 301
    log.record_many(protocol="opcua", peer="p", user="u", points=["x", "y"], olds=[0.0, None],
                    news=[math.inf, 2.0], result=ACCEPTED)  # fmt: skip
    assert log.counts == {ACCEPTED: 302, REFUSED: 1}
    groups = AuditLog(max_buffer=100)  # the bound is in values: groups count theirs
    names = [f"p{i}" for i in range(30)]
    for _ in range(10):
        groups.record_many(protocol="opcua", peer="p", user="u", points=names, olds=[0.0] * 30,
                           news=[1.0] * 30, result=ACCEPTED)  # fmt: skip
        assert len(groups.records()) <= 100
    assert groups.dropped + len(groups.records()) == 300
    assert [r.point for r in groups.records()[-30:]] == names
    with pytest.raises(ValueError, match="expected 1 old and new values"):
        log.record_many(protocol="opcua", peer="p", user="u", points=["x"], olds=[], news=[],
                        result=ACCEPTED)  # fmt: skip


def test_a_streamed_group_record_is_its_to_json_line(tmp_path):
    """The file's group lines reuse what repeats from the last record of the same points (the
    names, old values that were the last new ones): every line equals ``to_json()`` exactly,
    through NaN, inf, None, repeated values, other layouts and a name with a NUL."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    rng = np.random.default_rng(3)
    names = [f"bus{i}.vm_pu" for i in range(50)]
    odd = ["a\x00old\x00", "b"]
    prev = rng.random(50).tolist()
    recs = []
    for k in range(40):
        new = rng.random(50).astype(np.float32).astype(float).tolist()
        if k % 5 == 0:
            new[3] = math.nan
        if k % 6 == 0:
            new[4] = math.inf
        if k % 7 == 0:
            new[5] = None
        if k % 4 == 0:
            new = list(prev)  # unchanged: old and new the same
        pts, olds, news = (names, prev, new) if k % 9 else (odd, prev[:2], new[:2])
        recs.append(log.record_many(protocol="opcua", peer="127.0.0.1:1", user="plant",
                                    points=pts, olds=olds, news=news, result=ACCEPTED,
                                    role="plant"))  # fmt: skip
        if k % 9:
            prev = new
    log.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines == [r.to_json() for r in recs]
    back = read_audit(path)
    assert len(back) == sum(r.count for r in recs)
