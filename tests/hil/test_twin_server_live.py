"""The twin's own OPC UA server: live state after each step, read-only, safe defaults.

Real asyncua server and client over loopback; the sync loop runs on a tiny in-process FieldLink
(gridtwin's own interface) and the real GridModel.
"""

from __future__ import annotations

import math
import warnings

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import UaStatusCodeError

from hil.links.base import FieldLink
from hil.sync import SyncLoop
from hil.twin_server import TwinServer
from twin.model import GridModel
from twin.pointmap import generate_pointmap, resolve_element
from twin.quality import Quality, Sample

pytestmark = pytest.mark.usefixtures("no_task_leak")


class FakeLink(FieldLink):
    protocol = "fake"

    def __init__(self, points) -> None:
        super().__init__("fake:1", points)
        self.values: dict[str, Sample] = {}
        self.connected = True

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def poll(self) -> None:
        pass

    async def _send(self, items) -> None:
        pass

    def read_inputs(self, now=None):
        return {
            p.name: self.values.get(p.name, Sample(math.nan, Quality.STALE, 0.0))
            for p in self.inputs
        }


def _loop(feeder_net, mode: str):
    net = feeder_net("twin-server")
    pm = generate_pointmap(net, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GridModel(net)
        sol = model.solve()
    link = FakeLink(pm.points)
    for p in link.inputs:
        if p.column == "closed":
            v = 1.0
        elif p.column == "tap_pos":
            v = 0.0
        elif p.table == "switch":
            v = 0.0
        else:  # the field agrees with the twin's own load flow
            pos = net[p.table].index.get_loc(resolve_element(net, p))
            v = float(sol.get(p.table, p.column)[pos])
        link.values[p.name] = Sample(v, Quality.GOOD, 0.0)
    return net, pm, model, link, SyncLoop(model, pm, [link], mode=mode)


async def _value(client: Client, srv: TwinServer, path: str):
    return await client.get_node(srv.node_id(path)).read_value()


async def test_publishes_bus_line_and_stats_after_each_step(feeder_net):
    net, pm, model, link, loop = _loop(feeder_net, "hil")
    async with TwinServer(net, pm) as srv:
        srv.attach(loop)
        assert srv.endpoint.startswith("opc.tcp://127.0.0.1:")
        async with Client(srv.endpoint, timeout=5) as client:
            rep = await loop.step(0.0)
            sol = loop.last_solution
            assert await _value(client, srv, "Twin/Buses/MV/vm_pu") == pytest.approx(
                float(sol.get("bus", "vm_pu")[1])
            )
            assert await _value(client, srv, "Twin/Lines/L1/loading_percent") == pytest.approx(
                float(sol.get("line", "loading_percent")[0])
            )
            assert await _value(client, srv, "Twin/Trafos/T1/p_hv_mw") == pytest.approx(
                float(sol.get("trafo", "p_hv_mw")[0])
            )
            assert await _value(client, srv, "Twin/Stats/Steps") == 1
            assert await _value(client, srv, "Twin/Stats/Converged") is True
            assert await _value(client, srv, "Twin/Stats/Time_s") == 0.0
            assert await _value(client, srv, "Twin/Points/T1.tap_pos/Quality") == "good"
            assert rep.durations["publish"] > 0
            # a stale input shows up as such
            link.values["T1.tap_pos"] = Sample(0.0, Quality.COMMS_LOST, 0.0)
            await loop.step(0.1)
            assert await _value(client, srv, "Twin/Points/T1.tap_pos/Quality") == "comms_lost"
            assert await _value(client, srv, "Twin/Stats/Steps") == 2
            assert srv.publish_count == 2 and srv.last_publish_s > 0


async def test_mirror_divergence_and_alarm_are_exposed(feeder_net):
    net, pm, model, link, loop = _loop(feeder_net, "mirror")
    async with TwinServer(net, pm) as srv:
        srv.attach(loop)
        async with Client(srv.endpoint, timeout=5) as client:
            rep = await loop.step(0.0)
            assert rep.converged and rep.alarms == ()
            assert await _value(client, srv, "Twin/Alarms/ActiveCount") == 0
            d0 = await _value(client, srv, "Twin/Points/MV.vm_pu/Divergence")
            assert d0 < 1e-3
            v = link.values["MV.vm_pu"].value
            link.values["MV.vm_pu"] = Sample(v + 0.08, Quality.GOOD, 0.0)
            rep = await loop.step(1.0)
            assert [a.point for a in rep.alarms] == ["MV.vm_pu"]
            assert await _value(client, srv, "Twin/Alarms/ActiveCount") == 1
            active = await _value(client, srv, "Twin/Alarms/Active")
            assert len(active) == 1 and "MV.vm_pu" in active[0]
            assert "MV.vm_pu" in await _value(client, srv, "Twin/Alarms/Last")
            d1 = await _value(client, srv, "Twin/Points/MV.vm_pu/Divergence")
            assert d1 == pytest.approx(0.08, abs=0.01)


async def test_read_only_and_safe_defaults(feeder_net):
    net, pm, model, link, loop = _loop(feeder_net, "hil")
    async with TwinServer(net, pm, users={"scada": "s3cret"}) as srv:
        srv.attach(loop)
        await loop.step(0.0)
        async with Client(srv.endpoint, timeout=5) as client:
            endpoints = await client.get_endpoints()
            assert {e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in endpoints} == {"None"}
            assert all("127.0.0.1" in e.EndpointUrl for e in endpoints)
            node = client.get_node(srv.node_id("Twin/Buses/MV/vm_pu"))
            before = await node.read_value()
            with pytest.raises(UaStatusCodeError):
                await node.write_value(ua.DataValue(ua.Variant(0.5, ua.VariantType.Double)))
            assert await node.read_value() == before
            stats = client.get_node(srv.node_id("Twin/Stats/Steps"))
            with pytest.raises(UaStatusCodeError):
                await stats.write_value(ua.DataValue(ua.Variant(99, ua.VariantType.Int64)))
        # a known user logs in; a wrong password does not
        good = Client(srv.endpoint, timeout=5)
        good.set_user("scada")
        good.set_password("s3cret")
        async with good:
            assert await good.get_node(srv.node_id("Twin/Stats/Steps")).read_value() == 1
        bad = Client(srv.endpoint, timeout=5)
        bad.set_user("scada")
        bad.set_password("wrong")
        with pytest.raises(UaStatusCodeError):
            await bad.connect()
        await bad.disconnect()


async def test_unknown_path_is_an_error(feeder_net):
    net, pm, model, link, loop = _loop(feeder_net, "hil")
    srv = TwinServer(net, pm)
    await srv.start()
    try:
        from hil.errors import HilError

        with pytest.raises(HilError, match="no published variable"):
            srv.node_id("Twin/Buses/Nowhere/vm_pu")
    finally:
        await srv.stop()


async def test_subscribers_get_the_values_published_in_bulk(feeder_net):
    import asyncio

    net, pm, model, link, loop = _loop(feeder_net, "hil")
    async with TwinServer(net, pm) as srv:
        srv.attach(loop)
        async with Client(srv.endpoint, timeout=5) as client:
            seen: list[int] = []
            got_two = asyncio.Event()

            class Handler:
                def datachange_notification(self, node, val, data):
                    seen.append(val)
                    if val == 2:
                        got_two.set()

            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(client.get_node(srv.node_id("Twin/Stats/Steps")))
            await loop.step(0.0)
            await loop.step(0.1)
            await asyncio.wait_for(got_two.wait(), timeout=10)
            assert seen[-1] == 2
            await sub.delete()


async def test_unmonitored_values_read_the_last_publication_and_a_late_subscriber_starts_there(
    feeder_net,
):
    """Issue 15: a variable nobody monitors keeps the step's value and makes its DataValue when
    read; subscribing later starts from the last published value, then follows each step."""
    import asyncio

    net, pm, model, link, loop = _loop(feeder_net, "hil")
    async with TwinServer(net, pm) as srv:
        srv.attach(loop)
        async with Client(srv.endpoint, timeout=5) as client:
            await loop.step(0.0)
            assert await _value(client, srv, "Twin/Stats/Steps") == 1
            await loop.step(0.25)
            assert await _value(client, srv, "Twin/Stats/Steps") == 2
            assert await _value(client, srv, "Twin/Stats/Time_s") == pytest.approx(0.25)
            dv = await client.get_node(srv.node_id("Twin/Stats/Steps")).read_data_value()
            assert dv.StatusCode.is_good() and dv.SourceTimestamp is not None
            seen: list[int] = []
            got_three = asyncio.Event()

            class Handler:
                def datachange_notification(self, node, val, data):
                    seen.append(val)
                    if val == 3:
                        got_three.set()

            sub = await client.create_subscription(50, Handler())
            await sub.subscribe_data_change(client.get_node(srv.node_id("Twin/Stats/Steps")))
            await loop.step(0.5)
            await asyncio.wait_for(got_three.wait(), timeout=10)
            assert seen[0] == 2 and seen[-1] == 3
            assert await _value(client, srv, "Twin/Stats/Time_s") == pytest.approx(0.5)
            await sub.delete()
