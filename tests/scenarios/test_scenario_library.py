"""The bundled scenarios run and pass; the engine's results folder, determinism, CLI and pacing."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from scenarios.cli import main
from scenarios.config import load_scenario, loads_scenario
from scenarios.engine import run_scenario
from twin.recorder import read_events, read_timeseries

LIB = Path(__file__).resolve().parents[2] / "scenarios" / "library"


@pytest.mark.parametrize(
    "name",
    [
        "pv_midday_voltvar",
        "storm_restoration",
        "avr_load_ramp",
        "relay_trip_modbus",
        "comms_loss",
        "mirror_biased_meter",
    ],
)
def test_bundled_scenario_passes(name: str, tmp_path: Path) -> None:
    res = run_scenario(LIB / f"{name}.toml", out_dir=tmp_path / name)
    failed = [f"{c.name}: {c.message}" for c in res.checks if not c.passed]
    assert not res.error, res.error
    assert failed == []
    assert res.steps == res.scenario.steps + 1


def test_city_day_from_the_command_line(tmp_path: Path) -> None:
    """The README's main job: a simulated day at 1-min steps, exit code 0, a full results folder."""
    out = tmp_path / "city"
    junit = tmp_path / "ci" / "city.xml"
    code = main(
        [
            "run",
            str(LIB / "city_day.toml"),
            "--out",
            str(out),
            "--junit",
            str(junit),
            "--no-progress",
        ]
    )
    assert code == 0
    for f in ("timeseries.parquet", "events.csv", "alarms.csv", "summary.json", "junit.xml"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and summary["steps"] == 1441
    assert summary["seed"] == 7 and summary["backend"]["model"]
    assert summary["versions"]["simpy"]
    df = read_timeseries(out)
    assert len(df) == 1441
    assert {
        "bus.vm_pu[N1]",
        "line.loading_percent[L_SS1_N1]",
        "switch.closed[Q45]",
        "trafo.tap_pos[T1]",
        "sgen.p_mw[PV_N1_F1_B2]",
    } <= set(df.columns)
    # the day has a shape: PV at noon, nothing at night; the EV evening peak loads the feeders
    pv = df["sgen.p_mw[PV_N1_F1_B2]"].to_numpy()
    assert pv[12 * 60] > 0.02 and pv[2 * 60] == 0.0
    ev = df["load.p_mw[EV_N1_F1_B3]"].to_numpy()
    assert ev[19 * 60] > 3 * ev[5 * 60]
    tree = ET.parse(junit)
    cases = tree.getroot().findall(".//testcase")
    assert len(cases) == len(summary["checks"]) and not tree.getroot().findall(".//failure")


SHORT = """
name = "short"
grid = "urban_district"
start = "12:00"
duration = "10min"
step = "1min"
seed = {seed}

[[profile]]
table = "sgen"
match = "PV_*"
shape = "pv_cloudy"

[[profile]]
table = "load"
category = "ev"
shape = "ev_evening"

[[event]]
kind = "load_step"
match = "RES_N1_*"
factor = 1.2
at = "12:03"
duration = "4min"

[[event]]
kind = "switch_close"
element = "Q45"
when = "load.p_mw[RES_N1_F1_B1] > 0.03"
delay = "30s"

[[check]]
kind = "voltage_band"
max_pu = {vmax}

[[check]]
kind = "switch_state"
element = "Q45"
closed = true
at = "12:06"
"""


def _short(seed: int = 1, vmax: float = 1.1, **kw):
    sc = loads_scenario(SHORT.format(seed=seed, vmax=vmax))
    return dataclasses.replace(sc, **kw) if kw else sc


def test_same_seed_same_results_step_for_step() -> None:
    a = run_scenario(_short(seed=9), write_files=False).recorder.to_frame()
    b = run_scenario(_short(seed=9), write_files=False).recorder.to_frame()
    c = run_scenario(_short(seed=10), write_files=False).recorder.to_frame()
    assert list(a.columns) == list(b.columns)
    assert np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=True)
    assert not np.array_equal(a.to_numpy(), c.to_numpy(), equal_nan=True)


def test_events_steps_and_triggers_act_on_the_twin() -> None:
    res = run_scenario(_short(), write_files=False)
    df = res.recorder.to_frame()
    p = df["load.p_mw[RES_N1_F1_B1]"].to_numpy()
    assert p[4] == pytest.approx(1.2 * p[2], rel=0.1)  # step on at 12:03
    assert p[8] == pytest.approx(p[2], rel=0.1)  # and off after its 4 min
    assert df["switch.closed[Q45]"].iloc[0] == 0.0 and df["switch.closed[Q45]"].iloc[-1] == 1.0
    kinds = [e["kind"] for e in res.recorder.events]
    assert "trigger" in kinds and "switch_close" in kinds
    assert all(c.passed for c in res.checks)


def test_failing_check_exits_1_and_names_it(tmp_path: Path) -> None:
    f = tmp_path / "tight.toml"
    f.write_text(SHORT.format(seed=1, vmax=1.0))
    out = tmp_path / "out"
    assert main(["run", str(f), "--out", str(out), "--no-progress"]) == 1
    root = ET.parse(out / "junit.xml").getroot()
    failures = root.findall(".//failure")
    assert len(failures) == 1 and "expected" in failures[0].get("message", "")
    assert json.loads((out / "summary.json").read_text())["passed"] is False


def test_model_only_run_without_hardware() -> None:
    res = run_scenario(_short(hardware="none"), write_files=False)
    assert res.passed and res.summary["links"] == []


def test_local_fault_is_cleared_by_the_in_process_relay() -> None:
    sc = loads_scenario(
        SHORT.format(seed=1, vmax=1.1).replace(
            "[[check]]",
            '[[event]]\nkind = "fault"\nelement = "L_N1_N2"\ncurrent_ka = 3\n'
            'at = "12:01:30"\n\n[[check]]',
            1,
        )
    )
    res = run_scenario(dataclasses.replace(sc, hardware="none"), write_files=False)
    cleared = [e for e in res.recorder.events if e["kind"] == "fault_cleared"]
    assert len(cleared) == 1 and cleared[0]["time_s"] == pytest.approx(90.5)


def test_realtime_pace_reports_lag(tmp_path: Path) -> None:
    # 10 steps of 1 s at 20x: about half a second of wall time; lag is reported, not asserted.
    sc = _short(duration=10.0, step=1.0, pace="realtime", speed=20.0)
    sc = dataclasses.replace(sc, events=(), checks=sc.checks[:1])
    res = run_scenario(sc, out_dir=tmp_path / "rt")
    pace = res.summary["timings"]["pace"]
    assert pace["pace"] == "realtime" and pace["speed"] == 20.0
    assert pace["lag_max_s"] >= pace["lag_mean_s"] >= 0.0
    assert res.summary["deadline_misses"] >= 0 and res.steps == 11
    assert read_events(tmp_path / "rt")["kind"].iloc[0] == "start"


def test_run_error_keeps_results(tmp_path: Path, monkeypatch) -> None:
    sc = _short()
    import hil.field as hf

    real = hf.EmulatedField.step
    calls = {"n": 0}

    async def broken(self, t: float):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("field went away")
        return await real(self, t)

    monkeypatch.setattr(hf.EmulatedField, "step", broken)
    res = run_scenario(sc, out_dir=tmp_path / "err")
    assert "field went away" in res.error and not res.passed
    assert len(read_timeseries(tmp_path / "err")) == 3
    assert "field went away" in (tmp_path / "err" / "events.csv").read_text()
    assert (tmp_path / "err" / "junit.xml").is_file()


def test_unknown_element_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(SHORT.format(seed=1, vmax=1.1).replace('element = "Q45"', 'element = "Q99"'))
    assert main(["run", str(f), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    with pytest.raises(Exception, match="Q99"):
        run_scenario(load_scenario(f), write_files=False)
