"""Scenarios against a separate ``gridtwin emulate`` process, reached through a hardware.toml
over real loopback sockets (OPC UA and Modbus TCP), as a user points a scenario at hardware.

Every event kind either runs or is refused before the run; an event that fails at run time is an
``event_error`` row of events.csv, never a traceback; mirror mode follows the hardware.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scenarios.engine import run_scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HEADER = """
name = "{name}"
grid = "urban_district"
hardware = "hardware.toml"
mode = "{mode}"
start = "12:00"
duration = "{duration}"
step = "0.5s"
pace = "realtime"
speed = 1.0

[record]
quantities = ["switch.closed[Q12]", "bus.vm_pu[N2]"]
setpoints = false

[[check]]
kind = "converged"
"""

#: One event of every kind (parameters that fit urban_district and its generated point map).
EVENTS = {
    "switch_open": 'element = "Q45"',
    "switch_close": 'element = "Q45"',
    "load_step": 'match = "RES_N1_*"\nfactor = 1.5',
    "gen_step": 'match = "PV_N1_*"\nfactor = 0.5',
    "line_outage": 'element = "L_N5_N6"',
    "line_return": 'element = "L_N5_N6"',
    "trafo_outage": 'element = "TD_N8"',
    "trafo_return": 'element = "TD_N8"',
    "fault": 'element = "L_N1_N2"\ncurrent_ka = 4.0',
    "der_trip": 'match = "PV_N2_*"',
    "der_reconnect": 'match = "PV_N2_*"',
    "tap_change": 'element = "T1"\ndelta = 1',
    "setpoint": 'point = "T1.avr_band_pu"\nvalue = 0.02',
    "comms_loss": 'target = "Q12"',
    "comms_restore": 'target = "Q12"',
    "device_restart": 'device = "Q12"',
    "meas_noise": 'point = "N2.vm_pu"\nsigma = 0.001',
    "meas_bias": 'point = "N2.vm_pu"\noffset = 0.05',
    "process": 'function = "scenario_user_process:ring_closer"',
}


def _scenario(tmp_path: Path, emu, name: str, events: str, *, mode: str = "hil", duration="3s"):
    (tmp_path / "hardware.toml").write_text(emu.hardware_toml())
    f = tmp_path / f"{name}.toml"
    f.write_text(HEADER.format(name=name, mode=mode, duration=duration) + events)
    return f


def _events(out: Path) -> list[dict]:
    import csv

    with open(out / "events.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_event_kind_runs_or_fails_as_an_event(
    tmp_path: Path, emulator_process, kind, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the "process" event's module
    monkeypatch.delitem(sys.modules, "scenario_user_process", raising=False)
    body = f'\n[[event]]\nkind = "{kind}"\n{EVENTS[kind]}\nat = "+1s"\n'
    f = _scenario(tmp_path, emulator_process, kind, body)
    res = run_scenario(f, out_dir=tmp_path / "out")
    assert res.error == "", res.error
    rows = _events(tmp_path / "out")
    kinds = [r["kind"] for r in rows]
    assert "end" in kinds
    errors = [r for r in rows if r["kind"] == "event_error"]
    applied = [r for r in rows if r["kind"] not in ("start", "end", "event_error", "trigger")]
    # it ran (a row of its own at 1 s), or it failed as an event naming its kind and line
    if errors:
        fields = json.loads(errors[0]["fields"])
        assert fields["event"] == kind
        assert "(line " in errors[0]["message"]
    else:
        assert any(float(r["time_s"]) == pytest.approx(1.0) for r in applied), rows


def test_mirror_against_a_hardware_file(tmp_path: Path, emulator_process):
    f = _scenario(tmp_path, emulator_process, "mirror", "", mode="mirror", duration="1s")
    res = run_scenario(f, out_dir=tmp_path / "out")
    assert res.error == "", res.error
    assert res.steps == 3
    links = res.summary["field"]["links"]
    assert any(k.startswith("opcua:") for k in links)
    assert any(k.startswith("modbus:") for k in links)
