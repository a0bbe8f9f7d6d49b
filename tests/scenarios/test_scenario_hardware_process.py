"""Scenarios against a separate ``gridtwin emulate`` process, reached through a hardware.toml
over real loopback sockets (OPC UA and Modbus TCP), as a user points a scenario at hardware.

Every event kind either runs or is refused before the run; an event that fails at run time is an
``event_error`` row of events.csv, never a traceback; mirror mode follows the hardware.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from scenarios.engine import run_scenario
from scenarios.validate import validate_file
from twin.errors import ConfigError

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


#: Refused against real hardware in hil mode (scenarios.validate.EVENT_SUPPORT), with why.
REFUSED = {
    "device_restart": "acts inside the emulated substation",
    "meas_noise": "acts inside the emulated substation",
    "meas_bias": "acts inside the emulated substation",
    "comms_loss": "cuts a link; expected one of modbus, opcua, found 'Q12'",
    "comms_restore": "cuts a link; expected one of modbus, opcua, found 'Q12'",
}


@pytest.mark.parametrize("kind", sorted(EVENTS))
def test_every_event_kind_runs_or_is_refused_by_validate(
    tmp_path: Path, emulator_process, kind, monkeypatch
):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the "process" event's module
    monkeypatch.delitem(sys.modules, "scenario_user_process", raising=False)
    body = f'\n[[event]]\nkind = "{kind}"\n{EVENTS[kind]}\nat = "+1s"\n'
    f = _scenario(tmp_path, emulator_process, kind, body)
    _, problems = validate_file(f)
    if kind in REFUSED:
        assert len(problems) == 1, problems
        assert problems[0].startswith("event[0].") and "(line 19)" in problems[0]
        assert REFUSED[kind] in problems[0]
        with pytest.raises(ConfigError, match=re.escape(REFUSED[kind].split(";")[0])):
            run_scenario(f, out_dir=tmp_path / "out")  # run refuses it before it starts
        return
    assert problems == []
    res = run_scenario(f, out_dir=tmp_path / "out")
    assert res.error == "", res.error
    rows = _events(tmp_path / "out")
    assert [r for r in rows if r["kind"] == "event_error"] == []
    applied = [r for r in rows if r["kind"] not in ("start", "field", "end", "trigger")]
    assert any(float(r["time_s"]) == pytest.approx(1.0) for r in applied), rows
    field = next(r for r in rows if r["kind"] == "field")
    assert "opcua:" in field["message"] and "modbus:" in field["message"]


def test_a_switch_without_a_command_point_is_refused(tmp_path: Path, emulator_process) -> None:
    import dataclasses

    import grids
    from twin.pointmap import dumps_pointmap, generate_pointmap

    pm = generate_pointmap(grids.load("urban_district"), mode="hil")
    pm = dataclasses.replace(pm, points=tuple(p for p in pm.points if p.name != "Q45.cmd"))
    (tmp_path / "points.toml").write_text(dumps_pointmap(pm))
    body = '\n[[event]]\nkind = "switch_open"\nelement = "Q45"\nat = "+1s"\n'
    f = _scenario(tmp_path, emulator_process, "nocmd", body)
    hw = tmp_path / "hardware.toml"
    hw.write_text('pointmap = "points.toml"\n' + hw.read_text())
    _, problems = validate_file(f)
    assert len(problems) == 1 and "needs to_field point(s) Q45.cmd" in problems[0], problems


def test_a_tap_change_is_a_scada_raise_the_emulator_follows(
    tmp_path: Path, emulator_starter
) -> None:
    """tap_change against a separate emulator: a pulse on ``T1.tap_raise`` (the AVR set to
    manual first); the tap changer steps after its mechanism time and the twin follows."""
    from twin.recorder import read_events, read_timeseries

    emu = emulator_starter()
    body = (
        '\n[[event]]\nkind = "setpoint"\npoint = "T1.avr_auto"\nvalue = 0\nat = "+0.5s"\n'
        '\n[[event]]\nkind = "tap_change"\nelement = "T1"\ndelta = 1\nat = "+1s"\n'
    )
    f = _scenario(tmp_path, emu, "tap", body, duration="9s")
    f.write_text(f.read_text().replace('"bus.vm_pu[N2]"]', '"bus.vm_pu[N2]", "trafo.tap_pos[T1]"]'))
    assert validate_file(f)[1] == []
    out = tmp_path / "out"
    res = run_scenario(f, out_dir=out)
    assert res.error == "", res.error
    ts = read_timeseries(out)
    taps = ts["trafo.tap_pos[T1]"]
    assert taps.iloc[-1] == taps.iloc[0] + 1, taps.tolist()
    ev = read_events(out)
    assert "event_error" not in set(ev["kind"])
    # the twin's own command: no field_change event for it
    assert not any((ev["kind"] == "field_change") & ev["message"].str.startswith("T1.tap_pos"))


def test_mirror_against_a_hardware_file(tmp_path: Path, emulator_process):
    f = _scenario(tmp_path, emulator_process, "mirror", "", mode="mirror", duration="1s")
    res = run_scenario(f, out_dir=tmp_path / "out")
    assert res.error == "", res.error
    assert res.steps == 3
    links = res.summary["field"]["links"]
    assert any(k.startswith("opcua:") for k in links)
    assert any(k.startswith("modbus:") for k in links)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(300)
def test_killing_and_restarting_the_emulator_is_lost_and_restored(
    tmp_path: Path, emulator_starter
) -> None:
    import threading
    import time

    from twin.recorder import read_events, read_timeseries

    ua, mb = _free_port(), _free_port()
    emu = emulator_starter(opcua_port=ua, modbus_port=mb)
    f = _scenario(tmp_path, emu, "killed", "", duration="40s")
    out = tmp_path / "out"
    result: dict = {}
    stepping, back = threading.Event(), threading.Event()

    def progress(done: int, total: int, t: float) -> None:
        if done >= 4:
            stepping.set()

    def run() -> None:
        result["res"] = run_scenario(f, out_dir=out, progress=progress)

    t = threading.Thread(target=run)
    t.start()
    try:
        # the run is stepping: kill the emulator, let the twin notice, bring it back
        assert stepping.wait(120), "the run did not start stepping"
        emu.stop()
        time.sleep(3.0)
        emulator_starter(opcua_port=ua, modbus_port=mb)
        back.set()
    finally:
        t.join(timeout=200)
    res = result["res"]
    assert res.error == "", res.error
    ev = read_events(out)
    lost = ev[ev["kind"] == "link_lost"]
    restored = ev[ev["kind"] == "link_restored"]
    assert len(lost) >= 1 and len(restored) >= 1, ev[["time_s", "kind", "message"]]
    assert restored["time_s"].max() > lost["time_s"].min()
    ts = read_timeseries(out)
    up = [c for c in ts.columns if c.startswith("link.up[")]
    good = [c for c in ts.columns if c.startswith("link.good[")]
    assert len(up) == 2 and len(good) == 2
    assert ts[up].min().min() == 0.0 and ts[up].iloc[-1].min() == 1.0
    assert ts[good].iloc[0].min() > 0.9 and ts[good].min().min() < 0.1
