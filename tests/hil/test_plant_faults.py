"""Plant-side faults of the emulated substation: a frozen report, one device offline.

The contract is the store: what the substation reports (``PointStore.get``, what the protocol
servers answer from) changes, what its devices measure (``device_get``) does not. How a server
answers a point that is not good (0x0B, Bad_CommunicationError) is the servers' part; over
Modbus today an offline register point reads as the not-available value (INVALID at the twin).
"""

from __future__ import annotations

import pytest

from hil.emulator import EmulatedSubstation
from hil.errors import HilError, ProtocolError
from hil.field.base import SimClock
from hil.links.modbus import ModbusLink
from hil.store import PointStore
from twin.pointmap import generate_pointmap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")


@pytest.fixture
def pm(feeder_net):
    return generate_pointmap(feeder_net(), mode="hil")


def test_frozen_report_keeps_value_and_timestamp_not_quality(pm):
    clock = SimClock(0.0)
    store = PointStore(pm, clock=clock)
    store.set("L1.i_ka", 0.2, source="plant")
    clock.t = 5.0
    store.freeze("L1.i_ka")
    clock.t = 10.0
    store.set("L1.i_ka", 0.5, source="plant")
    assert (store.get("L1.i_ka").value, store.get("L1.i_ka").timestamp) == (0.2, 0.0)
    assert store.device_get("L1.i_ka").value == 0.5  # the relay still measures the current
    store.set("L1.i_ka", 0.6, quality=Quality.INVALID, source="plant")
    assert store.get("L1.i_ka").quality is Quality.INVALID  # quality is the device's
    assert store.get("L1.i_ka").value == 0.2
    assert store.faults == {"L1.i_ka": "frozen"}
    store.set("L1.i_ka", 0.7, source="plant")
    store.freeze("L1.i_ka", False)
    s = store.get("L1.i_ka")
    assert (s.value, s.quality, s.timestamp) == (0.7, Quality.GOOD, 10.0)
    assert store.faults == {}


def test_offline_marks_every_point_comms_lost_until_online(pm):
    clock = SimClock(0.0)
    store = PointStore(pm, clock=clock)
    seen = []
    store.subscribe(lambda p, s, src: seen.append((p.name, s.quality, src)))
    store.set("Q1.closed", 1.0, source="device:Q1")
    store.set_offline(["Q1.closed", "Q1.cmd"])
    assert store.get("Q1.closed").quality is Quality.COMMS_LOST
    assert store.get("Q1.closed").value == 1.0
    assert ("Q1.closed", Quality.COMMS_LOST, "fault") in seen  # the servers are told
    store.set("Q1.closed", 0.0, source="device:Q1")  # the breaker opens meanwhile
    assert store.get("Q1.closed").quality is Quality.COMMS_LOST
    assert store.device_get("Q1.closed").value == 0.0
    store.set_offline(["Q1.closed", "Q1.cmd"], False)
    s = store.get("Q1.closed")
    assert (s.value, s.quality) == (0.0, Quality.GOOD)


async def test_over_modbus_frozen_value_and_offline_device(feeder_net):
    # the map a mirror reads with: measurements to_twin (the plant served with --serve)
    pm = generate_pointmap(feeder_net(), mode="mirror")
    clock = SimClock(0.0)
    sub = EmulatedSubstation(feeder_net(), pm, clock=clock, protocols=("modbus",))
    async with sub:
        names = ["L1.i_ka", "Q1.operations", "Q1.closed"]
        link = ModbusLink(
            "127.0.0.1", sub.modbus_port, [pm[n] for n in names], clock=clock, max_gap=125
        )
        async with link:

            async def read() -> dict:
                await link.poll()
                return link.read_inputs()

            sub.store.set("L1.i_ka", 0.25, source="plant")
            assert (await read())["L1.i_ka"].value == pytest.approx(0.25)
            sub.freeze_point("L1.i_ka")
            sub.store.set("L1.i_ka", 0.4, source="plant")
            assert (await read())["L1.i_ka"].value == pytest.approx(0.25)
            sub.freeze_point("L1.i_ka", False)
            assert (await read())["L1.i_ka"].value == pytest.approx(0.4)

            sub.set_device_offline("Q1")
            assert sub.store.get("Q1.closed").quality is Quality.COMMS_LOST
            assert sub.store.get("Q1.cmd").quality is Quality.COMMS_LOST
            # an offline device's points answer 0x0B (gateway target failed to respond): the
            # link marks them not good point by point and serves the rest of the poll
            inputs = await read()
            assert not inputs["Q1.closed"].quality.is_good
            assert inputs["L1.i_ka"].quality is Quality.GOOD
            # every point of the poll offline: the poll itself fails, naming the 0x0B answer
            sub.set_device_offline("L1")
            with pytest.raises(ProtocolError, match="exception 11"):
                await link.poll()
            assert not link.read_inputs()["L1.i_ka"].quality.is_good
            sub.set_device_offline("L1", False)
            assert (await read())["L1.i_ka"].quality is Quality.GOOD
        with pytest.raises(HilError, match="found none named 'Q9'"):
            sub.set_device_offline("Q9")
