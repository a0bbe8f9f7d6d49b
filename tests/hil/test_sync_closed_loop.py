"""SyncLoop in closed loop with the emulated substation, over real loopback sockets.

The substation runs on a simulated clock: each test sets the time, ``sub.advance(t)`` runs the
device behaviours, then ``loop.step(t)`` reads (Modbus TCP, polled by the loop), applies, solves
and writes the computed measurements (OPC UA, logged in as the plant). No wall-clock timing.
"""

from __future__ import annotations

import asyncio
import math
import warnings

import pytest

from hil.emulator.substation import EmulatedSubstation
from hil.links.modbus import ModbusLink
from hil.links.opcua import OpcuaLink
from hil.sync import SyncLoop
from twin.model import GridModel
from twin.pointmap import generate_pointmap
from twin.recorder import Recorder

pytestmark = pytest.mark.usefixtures("no_task_leak")

T0 = 1000.0
PLANT = {"plant": ("plant-pw", "plant")}


class SimClock:
    """The substation's simulated clock (``now()``), shared with the links."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


class Rig:
    """An emulated substation plus the twin's two links and its sync loop."""

    def __init__(
        self, feeder_net, mode: str = "hil", inputs_over: str = "modbus", **loop_kw
    ) -> None:
        self.net = feeder_net("avr-feeder")
        self.pm = generate_pointmap(self.net, mode=mode)
        self.clock = SimClock()
        self.sub = EmulatedSubstation(self.net, self.pm, clock=self.clock, users=PLANT)
        self.mode = mode
        self.inputs_over = inputs_over
        self.loop_kw = loop_kw
        self.t = T0

    async def __aenter__(self) -> Rig:
        await self.sub.start()
        pm, clk = self.pm, self.clock
        inputs = [p for p in pm.points if p.direction == "to_twin"]
        outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
        if self.inputs_over == "modbus":
            self.reader = ModbusLink(
                "127.0.0.1", self.sub.modbus_port, inputs, clock=clk.now, backoff_max_s=0.3
            )
        else:  # OPC UA, polled by the loop once per step (anonymous: the viewer role reads)
            self.reader = OpcuaLink(
                self.sub.opcua_endpoint,
                inputs,
                mode="poll",
                clock=clk.now,
                namespace=pm.namespace,
                backoff_max_s=0.3,
            )
        await self.reader.connect()
        self.links = [self.reader]
        self.opcua = None
        if outputs:
            self.opcua = OpcuaLink(
                self.sub.opcua_endpoint,
                outputs,
                user="plant",
                password="plant-pw",
                clock=clk.now,
                namespace=pm.namespace,
                backoff_max_s=0.3,
                watchdog_s=0.2,
                timeout_s=1.0,
            )
            await self.opcua.connect()
            self.links.append(self.opcua)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = GridModel(self.net)
        self.loop = SyncLoop(
            self.model, pm, self.links, mode=self.mode, link_now=clk.now, **self.loop_kw
        )
        return self

    async def __aexit__(self, *exc) -> None:
        for link in self.links:
            await link.close()
        await self.sub.stop()

    async def tick(self, dt: float = 1.0):
        self.t += dt
        self.clock.t = self.t
        self.sub.advance(self.t)
        return await self.loop.step(self.t)

    def device(self, kind: str):
        return next(d for d in self.sub.devices if d.kind == kind)

    async def wait_connected(self, timeout_s: float = 20.0) -> None:
        """Bounded wait until every link reconnected by itself."""
        async with asyncio.timeout(timeout_s):
            while not all(lk.connected for lk in self.links):
                await asyncio.sleep(0.05)


# --- (1) AVR ---------------------------------------------------------------------------------
async def test_avr_brings_low_voltage_back_into_band(feeder_net):
    async with Rig(feeder_net) as rig:
        store = rig.sub.store
        store.set("T1.avr_delay_s", 3.0)  # definite time; the mechanism takes 5 s more
        vset, band = store.value("T1.avr_vset_pu"), store.value("T1.avr_band_pu")
        rep = await rig.tick()
        assert rep.converged and rep.written > 0
        v0 = store.value("MV.vm_pu")  # written by the twin over OPC UA
        assert v0 < vset - band, f"expected a low start voltage, found {v0}"
        tap0 = int(rig.model.net.trafo.at[0, "tap_pos"])
        in_band_at = None
        for k in range(120):
            rep = await rig.tick()
            assert rep.converged and not rep.stale
            if abs(store.value("MV.vm_pu") - vset) <= band:
                in_band_at = k
                break
        assert in_band_at is not None, f"voltage still {store.value('MV.vm_pu')} after 120 s"
        # the tap the AVR moved in the field is the tap of the twin's model
        tap = int(rig.model.net.trafo.at[0, "tap_pos"])
        assert tap != tap0 and tap == int(store.value("T1.tap_pos"))
        # and the voltage the twin computes with it is what it wrote
        sol = rig.loop.last_solution
        assert sol.get("bus", "vm_pu")[1] == pytest.approx(store.value("MV.vm_pu"), abs=1e-5)
        st = rig.loop.stats()
        assert st["steps"] == in_band_at + 2 and st["write_errors"] == 0


# --- (2) relay trips a breaker ---------------------------------------------------------------
async def test_relay_trip_is_followed_by_the_twin_within_one_step(feeder_net, tmp_path):
    rec = Recorder(tmp_path / "run")
    async with Rig(feeder_net, recorder=rec) as rig:
        store = rig.sub.store
        rep = await rig.tick(0.1)
        i_ka = store.value("L1.i_ka")
        assert i_ka > 0.3 and rep.converged
        store.set("L1.oc_pickup_ka", 0.5 * i_ka)  # the feeder is now "overloaded"
        store.set("L1.oc_delay_s", 0.3)
        relay = rig.device("relay")
        tripped_step = None
        for k in range(40):
            rep = await rig.tick(0.1)
            if store.value("Q1.closed") < 0.5:
                tripped_step = k
                break
            assert bool(rig.model.net.switch.at[0, "closed"]) is True
        assert tripped_step is not None, "the relay never tripped the breaker"
        assert relay.trips and "overcurrent" in relay.trips[0].cause
        # the step that saw the open breaker applied it, solved and wrote the dead feeder
        assert rep.converged and rep.applied >= 1
        assert bool(rig.model.net.switch.at[0, "closed"]) is False
        assert store.value("L1.i_ka") == pytest.approx(0.0, abs=1e-9)
        assert store.value("F1.vm_pu") == pytest.approx(0.0, abs=1e-9)  # de-energised
        assert store.value("MV.vm_pu") > 0.9
    rec.close()
    assert rec.rows == tripped_step + 2
    assert "switch.closed[Q1]" in rec.names and "line.i_ka[L1]" in rec.names


# --- (3) mirror mode: divergence alarm on a biased measurement ---------------------------------
@pytest.mark.parametrize("inputs_over", ["modbus", "opcua"])
async def test_mirror_bias_raises_an_alarm_naming_the_point(feeder_net, tmp_path, inputs_over):
    rec = Recorder(tmp_path / "mirror")
    async with Rig(feeder_net, mode="mirror", inputs_over=inputs_over, recorder=rec) as rig:
        assert rig.opcua is None  # nothing to write in mirror mode
        for _ in range(3):
            rep = await rig.tick()
            assert rep.converged and not rep.stale
            assert rep.estimation is not None and rep.estimation.success, rep.estimation
            assert rep.alarms == () and rep.divergences
        assert not rig.loop.alarms and not rig.loop.active_alarms
        # the twin follows the field's load
        assert rig.model.net.load.at[0, "p_mw"] == pytest.approx(14.0, rel=1e-6)

        store = rig.sub.store
        rtu = rig.device("rtu")
        true_v = store.value("MV.vm_pu")
        rtu.set_bias("MV.vm_pu", 0.06)
        rtu.inject("MV.vm_pu", true_v, rig.t)
        assert store.value("MV.vm_pu") == pytest.approx(true_v + 0.06)
        rep = await rig.tick()
        assert [a.point for a in rep.alarms] == ["MV.vm_pu"]
        alarm = rep.alarms[0]
        assert alarm.kind == "divergence" and alarm.time_s == rig.t
        assert alarm.field_value == pytest.approx(true_v + 0.06, abs=1e-6)
        assert alarm.twin_value == pytest.approx(true_v, abs=0.01)
        assert "MV.vm_pu" in alarm.message
        assert "MV.vm_pu" in rig.loop.active_alarms
        # a standing alarm is not raised again every step
        rep = await rig.tick()
        assert rep.alarms == () and "MV.vm_pu" in rig.loop.active_alarms
        # bias removed: the alarm clears
        rtu.set_bias("MV.vm_pu", 0.0)
        rtu.inject("MV.vm_pu", true_v, rig.t)
        rep = await rig.tick()
        assert rep.cleared == ("MV.vm_pu",) and not rig.loop.active_alarms
    rec.close()
    assert [a["point"] for a in rec.alarms] == ["MV.vm_pu"]


# --- (4) kill and restart the emulated servers -----------------------------------------------
async def test_server_kill_and_restart_goes_stale_and_resumes(feeder_net):
    async with Rig(feeder_net) as rig:
        store = rig.sub.store
        rep = await rig.tick()
        assert not rep.stale and rep.written > 0
        tap_before = int(rig.model.net.trafo.at[0, "tap_pos"])

        await rig.sub.stop()
        # the field changes while the twin cannot see it
        store.set("T1.tap_pos", tap_before + 2)
        store.set("Q1.closed", 0.0)
        stale_seen = 0
        for _ in range(10):
            rep = await rig.tick()
            if rep.stale:
                stale_seen += 1
                assert "T1.tap_pos" in rep.stale and "Q1.closed" in rep.stale
            # held, never applied as good
            assert int(rig.model.net.trafo.at[0, "tap_pos"]) == tap_before
            assert bool(rig.model.net.switch.at[0, "closed"]) is True
        assert stale_seen >= 9  # at most the first step may still see the cached poll
        assert rig.loop.stats()["steps"] == 11

        await rig.sub.start()
        await rig.wait_connected()
        for _ in range(20):
            rep = await rig.tick()
            if not rep.stale:
                break
        assert not rep.stale
        assert int(rig.model.net.trafo.at[0, "tap_pos"]) == tap_before + 2
        assert bool(rig.model.net.switch.at[0, "closed"]) is False
        # and the outputs flow again: the dead feeder is written over the reconnected OPC UA link
        for _ in range(20):
            if rep.written:
                break
            rep = await rig.tick()
        assert rep.written > 0
        assert store.value("F1.vm_pu") == 0.0
        assert math.isfinite(store.value("MV.vm_pu")) and store.value("MV.vm_pu") > 0.5
