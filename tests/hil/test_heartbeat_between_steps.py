"""The heartbeat between steps: a run whose steps are further apart than a device's watchdog
(a realtime run at 1-min steps, a 1 s watchdog here) keeps the devices out of their safe state;
without it (``heartbeat_s=None``) the same gap trips them. Real Modbus TCP on 127.0.0.1 to a
wall-clock emulated substation."""

from __future__ import annotations

import asyncio
import warnings

import pandapower as pp
import pytest

from hil.emulator.devices import DeviceSettings
from hil.emulator.substation import EmulatedSubstation
from hil.links.modbus import ModbusLink
from hil.sync import SyncLoop
from twin.model import GridModel
from twin.pointmap import generate_pointmap

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_task_leak")]

WATCHDOG_S = 1.0


async def _gap(feeder_net, heartbeat_s: float | None, gap_s: float):
    net = feeder_net("beat")
    pp.create_sgen(net, int(net.bus.index[-1]), 2.0, sn_mva=2.5, name="PV")
    pm = generate_pointmap(net, mode="hil")
    sub = EmulatedSubstation(
        net, pm, device_settings=DeviceSettings(comms_timeout_s=WATCHDOG_S), protocols=["modbus"]
    )
    await sub.start()
    carried = [p for p in pm.points if not (p.direction == "to_field" and p.kind == "measurement")]
    link = ModbusLink("127.0.0.1", sub.modbus_port, carried, timeout_s=1.0)
    try:
        await link.connect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GridModel(net)
        loop = SyncLoop(model, pm, [link], mode="hil", heartbeat_s=heartbeat_s)
        pv = next(d for d in sub.devices if d.kind == "inverter")
        await loop.step(0.0)  # the first heartbeat arms the device's watchdog
        await asyncio.sleep(gap_s)  # no step for several watchdog times
        tripped = pv.fallback_active
        beats = loop.heartbeats_sent
        await loop.step(60.0)
        await loop.drain()
        idle = loop.counters().get("idle_heartbeats", 0)
        return tripped, beats, idle
    finally:
        await link.close()
        await sub.stop()


async def test_beats_between_steps_keep_the_watchdog_fed(feeder_net) -> None:
    tripped, beats, idle = await _gap(feeder_net, heartbeat_s=0.25, gap_s=3 * WATCHDOG_S)
    assert not tripped
    assert beats >= 4 and idle >= 4  # about one per 0.25 s of the 3 s gap


async def test_without_them_the_same_gap_trips_the_inverter(feeder_net) -> None:
    tripped, beats, idle = await _gap(feeder_net, heartbeat_s=None, gap_s=3 * WATCHDOG_S)
    assert tripped and beats == 1 and idle == 0
