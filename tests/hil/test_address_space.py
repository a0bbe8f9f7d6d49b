"""Bulk-built OPC UA address spaces (hil.address_space) against asyncua's own node-by-node build,
and served to a real asyncua client over loopback: browse, read, write, subscribe."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys

import pytest
from asyncua import Client, Server, ua

import hil.address_space as A
from hil.address_space import AddressSpaceError, BulkBuilder, Variable, max_children
from hil.emulator import EmulatedSubstation
from hil.emulator.opcua_server import OpcuaServer
from hil.store import PointStore
from twin.pointmap import ModbusBinding, OpcuaBinding, Point, PointMap

pytestmark = pytest.mark.usefixtures("no_task_leak")

TIMEOUT = 30
NS_URI = "urn:test:bulk"


def _variables(ns: int) -> list[Variable]:
    rw = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask
    eu = ua.EUInformation(
        DisplayName=ua.LocalizedText("MW"), UnitId=5, Description=ua.LocalizedText("MW")
    )
    bad = ua.DataValue(
        ua.Variant(0.0, ua.VariantType.Double),
        StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData),
    )
    out = []
    for i in range(7):
        base = ("SS1", f"BAY_l{i}", f"l{i}")
        out += [
            Variable(
                base + ("p_mw",),
                ua.NodeId("/".join(base + ("p_mw",)), ns),
                ua.DataValue(ua.Variant(float(i), ua.VariantType.Double)),
                ua.VariantType.Double,
                access=rw,
                units=eu,
                group="line",
            ),
            Variable(
                base + ("tap",),
                ua.NodeId("/".join(base + ("tap",)), ns),
                ua.DataValue(ua.Variant(i, ua.VariantType.Int16)),
                ua.VariantType.Int16,
                access=rw,
                user_access=rw,
                group="line",
            ),
        ]
    out.append(
        Variable(
            ("SS1", "BAY_b", "b", "bad"), ua.NodeId(77, ns), bad, ua.VariantType.Double, group="bus"
        )
    )
    out.append(
        Variable(
            ("SS1", "BAY_b", "b", "names"),
            ua.NodeId("SS1/BAY_b/b/names", ns),
            ua.DataValue(ua.Variant(["a", "b"], ua.VariantType.String)),
            ua.VariantType.String,
            group="bus",
        )
    )
    return out


async def _server() -> tuple[Server, int]:
    server = Server()
    await server.init()
    return server, await server.register_namespace(NS_URI)


def _gen(nid):
    """asyncua numbers a property's node id, the bulk build names it: both "generated"."""
    if isinstance(nid, ua.NodeId) and nid.NamespaceIndex:
        if isinstance(nid.Identifier, int) or str(nid.Identifier).endswith("/EngineeringUnits"):
            return "generated"
    return nid


def _shape(aspace, nid: ua.NodeId, path: tuple[str, ...], out: dict) -> None:
    """Every node below ``nid`` by browse path: attributes (no timestamps) and references."""
    node = aspace[nid]
    attrs = {}
    for attr in node.attributes:
        dv = aspace.read_attribute_value(nid, attr)
        v = dv.Value.Value if dv.Value is not None else None
        attrs[attr] = (_gen(v), dv.StatusCode.value if dv.StatusCode else 0)
    refs = [
        (
            r.ReferenceTypeId,
            r.IsForward,
            _gen(r.NodeId),
            r.BrowseName,
            r.DisplayName,
            r.NodeClass,
            r.TypeDefinition,
        )
        for r in node.references
    ]
    out[path] = (attrs, sorted(refs, key=repr))
    for r in node.references:
        if r.IsForward and r.ReferenceTypeId != ua.NodeId(ua.ObjectIds.HasTypeDefinition):
            if r.NodeId.NamespaceIndex:
                _shape(aspace, r.NodeId, path + (r.BrowseName.Name,), out)


async def test_bulk_nodes_equal_asyncuas_own_build():
    """Same attributes (values, types, access levels, names) and references as add_object /
    add_variable / add_property, folders grouped (bound 4) the same way in both."""
    shapes = []
    for bulk in (True, False):
        server, ns = await _server()
        b = BulkBuilder(server, ns, max_children=4)
        b.extend(_variables(ns))
        if bulk:
            await b.build()
        else:
            await b.build_node_by_node()
        shape: dict = {}
        _shape(server.iserver.aspace, ua.NodeId(ua.ObjectIds.ObjectsFolder), (), shape)
        shapes.append(shape)
        assert max_children(server.iserver.aspace, ns) <= 4
    bulk_shape, ref_shape = shapes
    assert sorted(bulk_shape, key=repr) == sorted(ref_shape, key=repr)
    for path in ref_shape:
        if path == ():  # Objects: the standard nodes plus ours, in the same order
            continue
        assert bulk_shape[path][0] == ref_shape[path][0], path
        assert bulk_shape[path][1] == ref_shape[path][1], path
    # 7 bays + 1 under SS1 with at most 4 children: bay-type folders, then ranges
    assert (
        "SS1",
        "line",
        "BAY_l0 .. BAY_l3",
        "BAY_l0",
        "l0",
        "p_mw",
        "EngineeringUnits",
    ) in bulk_shape
    assert ("SS1", "bus", "BAY_b", "b", "names") in bulk_shape


async def test_bad_input_is_named():
    server, ns = await _server()
    b = BulkBuilder(server, ns)
    v = _variables(ns)[0]
    b.extend([v, v])
    with pytest.raises(AddressSpaceError, match="used twice"):
        await b.build()
    with pytest.raises(AddressSpaceError, match="max_children: expected >= 2, found 1"):
        BulkBuilder(server, ns, max_children=1)
    with pytest.raises(AddressSpaceError, match="folder_kind"):
        BulkBuilder(server, ns, folder_kind="tree")


async def test_progress_and_cancellation():
    server, ns = await _server()
    b = BulkBuilder(server, ns, max_children=8, chunk=5)
    b.extend(_variables(ns))
    seen: list[tuple[int, int]] = []
    with A.report_progress(lambda done, total: seen.append((done, total))):
        await b.build()
    assert len(seen) >= 3
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1][0] == seen[-1][1] == b.nodes_created

    # cancelled while it builds (between two chunks): CancelledError, no further nodes
    server, ns = await _server()
    b = BulkBuilder(server, ns, chunk=3)
    b.extend(_variables(ns))
    started = asyncio.Event()
    task = asyncio.create_task(b.build(lambda d, t: started.set()))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < b.nodes_created < 30


# --- served: the emulator over a deep, bounded tree ------------------------------------------
def _big_pointmap(n_bays: int) -> PointMap:
    points = []
    for i in range(n_bays):
        label = f"bus{i}"
        for col, kind, table, dtype in (
            ("vm_pu", "measurement", "input_register", "float32"),
            ("p_set", "setpoint", "holding_register", "float32"),
        ):
            path = ("SS1", f"BAY_{label}", label, col)
            points.append(
                Point(
                    name=f"{label}.{col}",
                    table="bus",
                    column=col,
                    element=i,
                    direction="input" if kind == "measurement" else "output",
                    kind=kind,
                    unit="pu" if kind == "measurement" else "MW",
                    low=-1000.0,
                    high=1000.0,
                    modbus=ModbusBinding(unit=1, table=table, address=2 * i, dtype=dtype),
                    opcua=OpcuaBinding(node_id="ns=2;s=" + "/".join(path), browse_path=path),
                )
            )
    return PointMap(points=tuple(points), substation="SS1")


async def _deep_checks(srv: OpcuaServer, name_in: str, name_out: str, bound: int) -> None:
    store = srv.store
    aspace = srv._server.iserver.aspace
    async with Client(srv.endpoint, timeout=TIMEOUT) as client:
        ns = await client.get_namespace_index("urn:gridtwin:substation")
        assert max_children(aspace, ns) <= bound
        # the node id is the point map's, wherever the node sits
        meas = client.get_node(srv.node_id(name_in))
        path_id = "/".join(store.pointmap[name_in].opcua.browse_path)
        assert srv.node_id(name_in) == ua.NodeId(path_id, ns)
        # deep in the tree: its parents up to Objects, each with at most `bound` children
        path = await meas.get_path()
        assert len(path) > 5, path
        for parent in path[:-1]:
            if parent.nodeid.NamespaceIndex == ns:
                assert len(await parent.get_children()) <= bound
        # the browse path the server reports leads back to the node
        names = [(await p.read_browse_name()).to_string() for p in path[1:]]
        assert (await client.nodes.objects.get_child(names[1:])).nodeid == meas.nodeid
        eu = await meas.get_child(f"{ns}:EngineeringUnits")
        assert (await eu.read_value()).DisplayName.Text == "pu"

        # read: the store's value and quality
        store.set(name_in, 1.0125)
        await asyncio.sleep(0)
        assert await meas.read_value() == pytest.approx(1.0125, rel=1e-6)

        # subscription: a store change becomes a data-change notification
        got: asyncio.Queue = asyncio.Queue()

        class Handler:
            def datachange_notification(self, node, val, data):
                got.put_nowait(val)

        sub_ua = await client.create_subscription(50, Handler())
        await sub_ua.subscribe_data_change(meas)
        first = await asyncio.wait_for(got.get(), TIMEOUT)
        assert first == pytest.approx(1.0125, rel=1e-6)
        store.set(name_in, 0.975)
        while True:
            val = await asyncio.wait_for(got.get(), TIMEOUT)
            if val == pytest.approx(0.975, rel=1e-6):
                break
        await sub_ua.delete()

        # write: an operator's setpoint reaches the store; a measurement is refused
        out = client.get_node(srv.node_id(name_out))
        await out.write_value(ua.Variant(42.5, ua.VariantType.Float))
        assert store.value(name_out) == pytest.approx(42.5)
        with pytest.raises(ua.UaStatusCodeError):
            await meas.write_value(ua.Variant(1.0, ua.VariantType.Float))
        assert store.value(name_in) == pytest.approx(0.975, rel=1e-6)


async def test_deep_bounded_tree_serves_reads_writes_subscriptions(monkeypatch, free_port):
    """3,000 bays under one substation with at most 8 children per node: 4 levels of
    range folders between SS1 and a bay."""
    monkeypatch.setattr(A, "DEFAULT_MAX_CHILDREN", 8)
    pm = _big_pointmap(3000)
    srv = OpcuaServer(PointStore(pm), port=free_port, anonymous_role="operator")
    await asyncio.wait_for(srv.start(), 300)
    try:
        await _deep_checks(srv, "bus2345.vm_pu", "bus2345.p_set", 8)
    finally:
        await srv.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_case9241pegase_map_starts_and_serves():
    """The generated map of case9241pegase (91,762 points): served over OPC UA and Modbus with
    at most DEFAULT_MAX_CHILDREN children per node. Bounded by a timeout, not timed."""
    import grids
    from twin.pointmap import generate_pointmap

    net = grids.load("case9241pegase")
    pm = generate_pointmap(net)
    assert len(pm) > 90_000
    meas = next(
        p for p in reversed(pm.points) if p.kind == "measurement" and p.opcua and p.unit == "pu"
    )
    out = next(p for p in reversed(pm.points) if p.kind == "setpoint" and p.opcua)
    sub = EmulatedSubstation(
        net, pm, devices=False, anonymous_role="operator", initial_loadflow=False
    )
    await asyncio.wait_for(sub.start(), 600)
    try:
        assert sub.opcua is not None and sub.modbus is not None
        low = out.low if out.low is not None and math.isfinite(out.low) else 0.0
        await _deep_checks_generated(sub, meas.name, out.name, low)
    finally:
        await sub.stop()


async def _deep_checks_generated(
    sub: EmulatedSubstation, name_in: str, name_out: str, value: float
) -> None:
    aspace = sub.opcua._server.iserver.aspace
    async with Client(sub.opcua_endpoint, timeout=TIMEOUT) as client:
        ns = await client.get_namespace_index("urn:gridtwin:substation")
        assert max_children(aspace, ns) <= A.DEFAULT_MAX_CHILDREN
        node = client.get_node(sub.node_id(name_in))
        sub.store.set(name_in, 1.01)
        await asyncio.sleep(0)
        assert await node.read_value() == pytest.approx(1.01, rel=1e-6)
        path = await node.get_path()
        assert len(path) >= 7  # Root / Objects / SS1 / <bay type> / <range> / BAY_x / x / column
        outn = client.get_node(sub.node_id(name_out))
        dtype = await outn.read_data_type()
        vt = ua.VariantType(dtype.Identifier)
        if vt not in (ua.VariantType.Float, ua.VariantType.Double):
            value = int(value)
        await outn.write_value(ua.Variant(value, vt))
        assert sub.store.value(name_out) == pytest.approx(value)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_emulate_prints_progress_and_stops_on_sigterm_while_starting():
    """`gridtwin emulate` on case9241pegase: progress lines while the address space is built,
    SIGTERM then ends the start-up at once (exit 0), not after it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scenarios.cli", "emulate", "--grid", "case9241pegase",
        "--opcua-port", "0", "--modbus-port", "0", "--no-devices",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(400):
            while True:
                raw = await proc.stdout.readline()
                assert raw, "emulate exited early: " + "".join(lines)
                lines.append(raw.decode())
                if b"building the OPC UA address space" in raw:
                    break
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"stopped while starting" in out, out.decode()
        assert b"serving" not in out
        assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_twin_server_on_ieee118_bounded_ids_unchanged():
    """The twin server's 1,200 points (and 118 buses, 186 lines): Points browses through
    bay-type and range folders, node ids are still the logical paths, values reach clients."""
    import grids
    from hil.twin_server import TwinServer
    from twin.pointmap import generate_pointmap

    net = grids.load("ieee118")
    pm = generate_pointmap(net)
    p = pm.points[-1]
    async with TwinServer(net, pm) as srv:
        assert (
            srv.node_id(f"Twin/Points/{p.name}/Value")
            == f"ns={srv.ns};s=Twin/Points/{p.name}/Value"
        )
        aspace = srv._server.iserver.aspace
        assert max_children(aspace, srv.ns) <= A.DEFAULT_MAX_CHILDREN
        async with Client(srv.endpoint, timeout=TIMEOUT) as client:
            points = client.get_node(ua.NodeId("Twin/Points", srv.ns))
            groups = await points.get_children()
            assert 1 < len(groups) <= A.DEFAULT_MAX_CHILDREN
            node = client.get_node(srv.node_id(f"Twin/Points/{p.name}/Value"))
            path = await node.get_path()
            # Root / Objects / Twin / Points / <bay type> [/ <range>] / <point> / Value
            names = [(await n.read_browse_name()).Name for n in path]
            assert names[:4] == ["Root", "Objects", "Twin", "Points"], names
            assert names[-2:] == [p.name, "Value"] and len(names) >= 7, names
            assert math.isnan(await node.read_value())
            got: asyncio.Queue = asyncio.Queue()

            class Handler:
                def datachange_notification(self, node, val, data):
                    got.put_nowait(val)

            sub = await client.create_subscription(20, Handler())
            await sub.subscribe_data_change(node)
            assert math.isnan(await asyncio.wait_for(got.get(), TIMEOUT))
            nid = ua.NodeId(f"Twin/Points/{p.name}/Value", srv.ns)
            await srv.write_batch([(nid, ua.DataValue(ua.Variant(3.25, ua.VariantType.Double)))])
            assert await asyncio.wait_for(got.get(), TIMEOUT) == 3.25
            assert await node.read_value() == 3.25
            await sub.delete()


async def test_a_store_change_while_the_nodes_are_built_is_served(free_port):
    """Values change while the address space is built (Modbus and devices run meanwhile):
    the nodes built before the change still end up with the new value."""
    pm = _big_pointmap(600)
    store = PointStore(pm)
    srv = OpcuaServer(store, port=free_port)
    changed = []

    def progress(done: int, total: int) -> None:
        if not changed:  # bus0 is built by now (the first 2,000 nodes)
            store.set("bus0.vm_pu", 1.0375)
            changed.append(done)

    with A.report_progress(progress):
        await asyncio.wait_for(srv.start(), 300)
    try:
        assert changed
        async with Client(srv.endpoint, timeout=TIMEOUT) as client:
            node = client.get_node(srv.node_id("bus0.vm_pu"))
            for _ in range(200):  # the pump pushes it soon after start
                dv = await node.read_data_value(raise_on_bad_status=False)
                if dv.Value is not None and dv.Value.Value is not None:
                    break
                await asyncio.sleep(0.02)
            assert dv.Value.Value == pytest.approx(1.0375, rel=1e-6)
            assert dv.StatusCode.is_good()
    finally:
        await srv.stop()
