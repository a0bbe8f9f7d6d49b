"""`gridtwin run` as an engineer uses it: bundled names, --duration/--until/--seed, several
scenarios with one JUnit file and the worst exit code, the results folder guarded by --force, and
the absolute time beside time_s in every results file."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from scenarios.cli import main
from scenarios.cli.run_cmd import _span, headline
from scenarios.config import loads_scenario, with_overrides
from twin.errors import ConfigError
from twin.recorder import Recorder, read_events, read_timeseries

SMALL = """
name = "{name}"
grid = "ieee9"
hardware = "none"
start = "2026-03-01T12:00"
duration = "3min"
step = "1min"
seed = 4

[[check]]
kind = "converged"

[[check]]
kind = "voltage_band"
min_pu = {vmin}
max_pu = 1.2
"""


def _write(tmp_path: Path, name: str, vmin: float = 0.8) -> Path:
    f = tmp_path / f"{name}.toml"
    f.write_text(SMALL.format(name=name, vmin=vmin), encoding="utf-8")
    return f


def test_validate_finds_a_bundled_scenario_by_name(capsys) -> None:
    assert main(["validate", "city_day"]) == 0
    assert "city_day: OK (city_day: grid urban_district" in capsys.readouterr().out


def test_several_scenarios_one_junit_worst_exit_code(tmp_path: Path, capsys) -> None:
    good, bad = _write(tmp_path, "good"), _write(tmp_path, "bad", vmin=1.5)
    junit = tmp_path / "all.xml"
    argv = ["run", str(good), str(bad), "--out", str(tmp_path / "runs"), "--junit", str(junit),
            "--no-progress", "--no-report"]  # fmt: skip
    assert main(argv) == 1  # the worst: one check of "bad" fails
    out = capsys.readouterr().out
    assert "good: passed (exit 0)" in out and "bad: FAILED (exit 1)" in out
    root = ET.parse(junit).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["gridtwin.good", "gridtwin.bad"]
    assert root.get("tests") == "4" and root.get("failures") == "1"
    for name in ("good", "bad"):  # one folder each, under --out
        assert json.loads((tmp_path / "runs" / name / "summary.json").read_text())["steps"] == 4


def test_bad_input_in_any_scenario_runs_none(tmp_path: Path) -> None:
    good = _write(tmp_path, "good")
    broken = tmp_path / "broken.toml"
    broken.write_text(SMALL.format(name="broken", vmin=0.8) + "\nspeling = 1\n")
    assert main(["run", str(good), str(broken), "--out", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_scenario_that_does_not_fit_its_grid_stops_the_batch_before_it_runs(
    tmp_path: Path, capsys
) -> None:
    good = _write(tmp_path, "good")
    typo = tmp_path / "typo.toml"
    typo.write_text(SMALL.format(name="typo", vmin=0.8).replace(
        "[[check]]", '[record]\nquantities = ["bus.vmpu"]\n\n[[check]]', 1))  # fmt: skip
    assert main(["run", str(good), str(typo), "--out", str(tmp_path / "runs")]) == 2
    assert "did you mean vm_pu" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "good").exists()


def test_overrides_on_the_command_line(tmp_path: Path) -> None:
    f = _write(tmp_path, "small")
    out = tmp_path / "o"
    quiet = ["--no-progress", "--no-report"]
    assert main(["run", str(f), "--until", "12:05", "--seed", "9", "--out", str(out), *quiet]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["duration_s"] == 300 and s["seed"] == 9 and s["steps"] == 6
    assert s["checks"][1]["passed"]  # the whole-run window follows the new duration
    assert main(["run", str(f), "--out", str(out), *quiet]) == 2  # results there: needs --force
    both = ["--until", "12:05", "--duration", "2min"]
    assert main(["run", str(f), *both, "--out", str(out), "--force", *quiet]) == 2
    assert main(["run", str(f), "--duration", "2min", "--out", str(out), "--force", *quiet]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert len(read_timeseries(out)) == 3  # nothing of the replaced run is left


def test_with_overrides_checks_event_and_check_times() -> None:
    text = SMALL.format(name="t", vmin=0.8) + (
        '\n[[event]]\nkind = "line_outage"\nelement = "line3"\nat = "12:02"\n'
    )
    sc = loads_scenario(text)
    assert with_overrides(sc, duration="2min").duration == 120
    with pytest.raises(ConfigError, match=r"before event\[0\] at 12:02:00 \(line \d+\)"):
        with_overrides(sc, duration="1min")
    with pytest.raises(ConfigError, match="expected a time after the start"):
        with_overrides(sc, until="2026-03-01T11:00")
    with pytest.raises(ConfigError, match="--duration: expected a positive duration"):
        with_overrides(sc, duration="0")
    assert with_overrides(sc, seed=3).seed == 3


def test_headline_says_which_time_the_rate_is_of() -> None:
    class R:
        steps = 1441
        scenario = loads_scenario(SMALL.format(name="h", vmin=0.8))
        summary = {"timings": {"wall_s": 8.7, "run_s": 6.9}}

    assert headline(R) == (
        "h: 1441 steps, 24 h simulated in 8.70 s wall (6.90 s stepping: 208.8 steps/s)"
    )
    assert _span(90) == "90 s" and _span(5400) == "1 h 30 min" and _span(600) == "10 min"


def test_absolute_time_beside_time_s_and_old_folders_read_the_same(tmp_path: Path) -> None:
    from scenarios.report import load_run

    start = dt.datetime(2026, 3, 1, 12, 0)
    for name, st in (("new", start), ("old", None)):
        rec = Recorder(tmp_path / name, flush_every=2, start=st)
        for k in range(3):
            rec.record(60.0 * k, {"bus.vm_pu[B1]": 1.0 + k / 100})
        rec.event(90.0, "trigger", "t")
        rec.alarm(120.5, "B1.vm_pu", 1.0, 1.1, 0.05, "diverges")
        rec.close()
        (tmp_path / name / "summary.json").write_text('{"scenario": "x", "checks": []}')
    ts = read_timeseries(tmp_path / "new")
    assert list(ts.columns[:2]) == ["time_s", "time"]
    assert ts["time"].iloc[2] == pd.Timestamp("2026-03-01 12:02:00")
    ev = read_events(tmp_path / "new")
    assert ev["time"].iloc[0] == "2026-03-01T12:01:30"
    alarms = (tmp_path / "new" / "alarms.csv").read_text().splitlines()
    assert alarms[0].endswith(",time") and alarms[1].endswith(",2026-03-01T12:02:00.500")
    assert "time" not in read_timeseries(tmp_path / "old").columns
    for name in ("new", "old"):
        rd = load_run(tmp_path / name)
        assert list(rd.ts["bus.vm_pu[B1]"]) == [1.0, 1.01, 1.02]
        assert list(rd.events["kind"]) == ["trigger"]


def test_check_names_are_never_cut_at_80_columns() -> None:
    from rich.console import Console
    from rich.table import Table

    from scenarios.checks import CheckResult
    from scenarios.cli.run_cmd import run_table

    long = "voltage_band_of_every_feeder_end_bus_in_the_evening_peak"
    msg = "failed on 3 of 31 steps; worst N4_F1_B5 0.9699 pu at 17:17 " * 2
    result = CheckResult(name=long, kind="voltage_band", passed=False, message=msg)

    class R:
        steps = 31
        scenario = loads_scenario(SMALL.format(name="w", vmin=0.8))
        summary = {"timings": {"wall_s": 1.0}}
        checks = [result]

    console = Console(width=80, record=True, color_system=None)
    console.print(run_table(R, Table))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if "│" in line)
    assert long in cells, text


def test_force_leaves_nothing_of_the_replaced_run(tmp_path: Path) -> None:
    """--force removes every result file of the earlier run, the audit log included (the new
    run appends to audit.jsonl while it goes: old records would read as this run's)."""
    from scenarios.results import RESULT_FILES, prepare_out_dir

    out = tmp_path / "o"
    out.mkdir()
    for name in RESULT_FILES:
        (out / name).write_text("old run\n")
    prepare_out_dir(out, force=True)
    assert "audit.jsonl" in RESULT_FILES
    assert sorted(p.name for p in out.iterdir()) == []
