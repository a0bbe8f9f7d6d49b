"""Issue 11's probe: a rooftop PV reporting p_mw = 1e30, over real loopback sockets.

The emulated substation serves the field (Modbus TCP for the twin's inputs, OPC UA for the
measurements it writes in hil mode, logged in as the plant). The PV's reported ``p_mw`` is set in
the substation's store after its devices ran, so the twin reads 1e30 over Modbus as a GOOD
value: the plausibility check must mark it INVALID, hold the last good value, alarm once and
keep the load flow (and the outputs) going. The clock is simulated; no wall-clock timing.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pandapower as pp
import pytest

from hil.emulator.substation import EmulatedSubstation
from hil.links.modbus import ModbusLink
from hil.links.opcua import OpcuaLink
from hil.sync import SyncLoop
from twin.model import GridModel
from twin.pointmap import PointMap, generate_pointmap
from twin.quality import Quality
from twin.recorder import Recorder

pytestmark = pytest.mark.usefixtures("no_task_leak")

T0 = 1000.0
PLANT = {"plant": ("plant-pw", "plant")}
PV = "PV_12.p_mw"


class SimClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def pv_net(feeder_net):
    net = feeder_net("pv-feeder")
    f1 = int(net.bus.index[net.bus.name == "F1"][0])
    pp.create_sgen(net, f1, p_mw=0.02, q_mvar=0.0, sn_mva=0.03, name="PV_12", type="PV")
    return net


class Rig:
    """Emulated substation + the twin's links (Modbus in, OPC UA out) + its sync loop."""

    def __init__(self, net, mode: str, *, edit=None, **loop_kw) -> None:
        self.net = net
        pm = generate_pointmap(net, mode=mode)
        if edit is not None:
            pm = PointMap(
                tuple(edit(p) for p in pm.points), substation=pm.substation, namespace=pm.namespace
            )
        self.pm = pm
        self.clock = SimClock()
        self.sub = EmulatedSubstation(net, pm, clock=self.clock, users=PLANT)
        self.mode = mode
        self.loop_kw = loop_kw
        self.t = T0
        self.opcua: OpcuaLink | None = None

    async def __aenter__(self) -> Rig:
        await self.sub.start()
        pm, clk = self.pm, self.clock
        inputs = [p for p in pm.points if p.direction == "to_twin"]
        outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
        reader = ModbusLink(
            "127.0.0.1", self.sub.modbus_port, inputs, clock=clk.now, backoff_max_s=0.3
        )
        await reader.connect()
        self.links = [reader]
        if outputs:
            self.opcua = OpcuaLink(
                self.sub.opcua_endpoint,
                outputs,
                user="plant",
                password="plant-pw",
                clock=clk.now,
                namespace=pm.namespace,
                backoff_max_s=0.3,
                timeout_s=2.0,
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

    async def tick(self, pv: float | None = None, dt: float = 1.0):
        """One step; ``pv``: what the PV reports this step (after the devices ran)."""
        self.t += dt
        self.clock.t = self.t
        self.sub.advance(self.t)
        if pv is not None:
            self.sub.store.set(PV, pv, source="test")
        return await self.loop.step(self.t)

    def pv_in_model(self) -> float:
        return float(self.model.net.sgen.at[0, "p_mw"])


def _kinds(rec: Recorder, kind: str) -> list[dict]:
    return [e for e in rec.events if e["kind"] == kind]


@pytest.mark.parametrize("mode", ["hil", "mirror"])
async def test_pv_reporting_1e30_is_held_alarmed_once_and_cleared(feeder_net, tmp_path, mode):
    rec = Recorder(tmp_path / mode)
    async with Rig(pv_net(feeder_net), mode, recorder=rec) as rig:
        for _ in range(3):
            rep = await rig.tick(0.02)
            assert rep.converged and rep.implausible == () and rep.alarms == ()
        assert rig.pv_in_model() == pytest.approx(0.02, rel=1e-6)

        steps = 20
        for k in range(steps):
            rep = await rig.tick(1e30)
            assert rep.converged, rep.error  # every step converges
            assert rep.implausible == (PV,)
            # INVALID for everything downstream, never GOOD
            assert rig.loop.samples[PV].quality is Quality.INVALID
            assert rig.loop.samples[PV].value == pytest.approx(1e30)
            assert rig.pv_in_model() == pytest.approx(0.02, rel=1e-6)  # held
            if mode == "hil":
                # outputs keep being computed and are in the field
                assert rig.loop.outputs, "no outputs computed"
                vm = rig.loop.outputs["MV.vm_pu"]
                assert rig.sub.store.value("MV.vm_pu") == pytest.approx(vm, abs=1e-6)
            assert (len(rep.alarms) == 1) is (k == 0)  # one alarm when it starts, not per step
        alarm = rep_alarm = next(a for a in rig.loop.alarms if a.kind == "implausible")
        assert alarm.point == PV and "1e+30" in alarm.message and "held at 0.02" in alarm.message
        assert "[-0.3, 0.3]" in rep_alarm.message  # 10 x the 0.03 MVA rating
        assert PV in rig.loop.active_alarms
        assert rig.loop.counters()["not_converged"] == 0
        assert rig.loop.counters()["implausible"] == 1

        rep = await rig.tick(0.025)  # back in range
        assert rep.converged and rep.implausible == () and PV in rep.cleared
        assert PV not in rig.loop.active_alarms
        assert rig.loop.samples[PV].quality is Quality.GOOD
        assert rig.pv_in_model() == pytest.approx(0.025, rel=1e-6)
        rep = await rig.tick(0.025)
        assert rep.cleared == () and rep.alarms == ()
    rec.close()
    started, cleared = _kinds(rec, "implausible"), _kinds(rec, "alarm_cleared")
    assert len(started) == 1 and started[0]["fields"]["point"] == PV
    assert [e["fields"]["point"] for e in cleared] == [PV]
    alarms = [a for a in rec.alarms if a["point"] == PV]
    assert len(alarms) == 1 and alarms[0]["field_value"] == pytest.approx(1e30)
    # the recorded input column has no 1e30 in it: NaN (not GOOD) while implausible
    assert "sgen.p_mw[PV_12]" in rec.names


async def test_without_the_check_the_probe_fails_and_names_the_changed_input(feeder_net):
    """The issue's probe as it was (plausibility off): the step does not converge, and now its
    message names the input that changed since the last converged step."""
    async with Rig(pv_net(feeder_net), "hil", plausibility=False) as rig:
        rep = await rig.tick(0.02)
        assert rep.converged
        good_t = rig.t
        rep = await rig.tick(1e30)
        assert not rep.converged
        assert rig.loop.outputs == {}  # nothing written while it does not converge
        assert "PV_12.p_mw 0.02 -> 1e+30" in rep.error, rep.error
        assert f"last converged step (t={good_t:.6g} s)" in rep.error
        a = rep.alarms[0]
        assert a.kind == "not_converged" and "PV_12.p_mw 0.02 -> 1e+30" in a.message
        rep = await rig.tick(1e30)  # still compared with the last converged step
        assert not rep.converged and "PV_12.p_mw 0.02 -> 1e+30" in rep.error


async def test_a_rate_of_change_limit_holds_a_jump_until_it_is_plausible(feeder_net, tmp_path):
    def edit(p):
        return dataclasses.replace(p, max_rate=0.001) if p.name == PV else p  # MW per s

    rec = Recorder(tmp_path / "rate")
    async with Rig(pv_net(feeder_net), "hil", edit=edit, recorder=rec) as rig:
        for _ in range(2):
            rep = await rig.tick(0.02)
            assert rep.converged and rep.implausible == ()
        rep = await rig.tick(0.0205)  # 0.0005 MW in 1 s: plausible
        assert rep.implausible == () and rig.pv_in_model() == pytest.approx(0.0205, rel=1e-6)
        rep = await rig.tick(0.0285)  # 0.008 MW in 1 s: 8 x max_rate
        assert rep.converged and rep.implausible == (PV,)
        msg = rep.alarms[0].message
        assert "0.0205 -> 0.0285" in msg and "max_rate 0.001" in msg, msg
        assert rig.pv_in_model() == pytest.approx(0.0205, rel=1e-6)
        # the value stays; measured from the last good one it becomes plausible after 8 s
        cleared_at = None
        for k in range(2, 12):
            rep = await rig.tick(0.0285)
            assert rep.converged
            if PV in rep.cleared:
                cleared_at = k
                break
            assert rep.implausible == (PV,) and rep.alarms == ()
        assert cleared_at == 8
        assert rig.pv_in_model() == pytest.approx(0.0285, rel=1e-6)
    rec.close()
    assert len(_kinds(rec, "implausible")) == 1 and len(_kinds(rec, "alarm_cleared")) == 1


async def test_limits_from_the_map_override_the_defaults(feeder_net):
    def edit(p):
        if p.name != PV:
            return p
        return dataclasses.replace(p, plausible_min=0.0, plausible_max=0.025)

    async with Rig(pv_net(feeder_net), "hil", edit=edit) as rig:
        rep = await rig.tick(0.02)
        assert rep.implausible == ()
        rep = await rig.tick(-0.01)  # a PV does not consume: below the map's 0
        assert rep.implausible == (PV,) and "[0, 0.025]" in rep.alarms[0].message
        assert "(map)" in rep.alarms[0].message
        rep = await rig.tick(0.028)  # within the default (0.3), above the map's 0.025
        assert rep.implausible == (PV,) and rep.alarms == ()
        assert math.isclose(rig.pv_in_model(), 0.02, rel_tol=1e-6)


SCENARIO = """
name = "meter_1e30"
grid = "urban_district"
hardware = "emulated"
mode = "mirror"
start = "10:00"
duration = "6min"
step = "1min"

[[event]]
kind = "meas_bias"
point = "RES_N1_F1_B1.p_mw"
offset = 0
at = "10:04"

[[check]]
kind = "converged"

[[check]]
kind = "expect_alarm"
point = "RES_N1_F1_B1.p_mw"

[[check]]
kind = "no_divergence"
"""


@pytest.mark.timeout(300)
def test_gridtwin_run_with_a_1e30_meter_converges_and_names_it(tmp_path):
    """``gridtwin run`` in its own process (emulated substation on 127.0.0.1): a meter biased
    to 1e30 from the command line (``--inject``) is held and alarmed, every step converges,
    and the bias removed at 10:04 clears it."""
    import csv
    import json
    import os
    import subprocess
    import sys

    sc = tmp_path / "meter.toml"
    sc.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "scenarios.cli", "run", str(sc), "--out", str(out)]
    cmd += ["--inject", "meas_bias:RES_N1_F1_B1.p_mw=1e30@10:02", "--no-progress", "-q"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(out / "events.csv", encoding="utf-8") as fh:
        events = list(csv.DictReader(fh))
    kinds = [(float(e["time_s"]), e["kind"]) for e in events]
    assert (120.0, "implausible") in kinds and (240.0, "alarm_cleared") in kinds, kinds
    assert not any(k == "not_converged" for _, k in kinds)
    implausible = [e for e in events if e["kind"] == "implausible"]
    assert len(implausible) == 1 and "RES_N1_F1_B1.p_mw = 1e+30 MW" in implausible[0]["message"]
    with open(out / "alarms.csv", encoding="utf-8") as fh:
        alarms = list(csv.DictReader(fh))
    assert [a["point"] for a in alarms] == ["RES_N1_F1_B1.p_mw"]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 7 and summary["not_converged_steps"] == 0, summary
    # the implausible alarm reaches the run: counted in the summary, seen by expect_alarm,
    # and not taken for a divergence
    assert summary["alarms"] == 1, summary
    checks = {c["kind"]: c for c in summary["checks"]}
    assert checks["expect_alarm"]["passed"], checks["expect_alarm"]
    assert checks["no_divergence"]["passed"], checks["no_divergence"]
