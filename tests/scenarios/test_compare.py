"""gridtwin compare and baselines: equal runs compare equal, a changed load is found and named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import grids
from scenarios.cli import main
from scenarios.compare import compare, load_compact, render, write_baseline
from scenarios.config import load_scenario
from scenarios.engine import run_scenario

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"
CHANGED_LOAD = "RES_N3_F2_B2"


def _scenario(**kw):
    """relay_trip_modbus without hardware (fast and deterministic), recording load powers too."""
    sc = load_scenario(LIBRARY / "relay_trip_modbus.toml")
    rec = dataclasses.replace(
        sc.record, quantities=(*sc.record.quantities, "load.p_mw", "trafo.loading_percent")
    )
    checks = tuple(c for c in sc.checks if c.kind != "field_value")  # no field without hardware
    return dataclasses.replace(sc, hardware="none", record=rec, checks=checks, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cmp")
    a = run_scenario(_scenario(), out_dir=base / "a")
    b = run_scenario(_scenario(), out_dir=base / "b")
    net = grids.load("urban_district")
    i = net.load.index[net.load.name == CHANGED_LOAD][0]
    net.load.at[i, "p_mw"] *= 1.5
    grid = base / "changed_grid.json"
    import pandapower as pp

    pp.to_json(net, str(grid))
    run_scenario(_scenario(grid=str(grid)), out_dir=base / "c")
    assert a.passed and b.passed
    return base


def test_two_runs_with_the_same_seed_compare_equal(runs, capsys) -> None:
    cmp = compare(runs / "a", runs / "b")
    assert cmp.equal, render(cmp)
    assert cmp.compared["element values"] > 10_000
    assert cmp.compared["switch/tap changes"] > 0 and cmp.compared["events"] > 0
    assert main(["compare", str(runs / "a"), str(runs / "b")]) == 0
    assert "EQUAL within tolerance" in capsys.readouterr().out


def test_a_changed_load_is_found_and_named(runs, capsys) -> None:
    cmp = compare(runs / "a", runs / "c")
    assert not cmp.equal
    named = [d for d in cmp.differences if d.what == "load.p_mw"]
    assert {d.element for d in named} == {CHANGED_LOAD}
    assert named[0].b == pytest.approx(named[0].a * 1.5, rel=1e-6)
    # The voltages it moves are named with bus and time as well.
    assert any(d.what == "bus.vm_pu" and d.element.startswith("N3_F2") for d in cmp.differences)
    assert main(["compare", str(runs / "a"), str(runs / "c")]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and f"load.p_mw[{CHANGED_LOAD}]" in out
    # Loose enough tolerances hold the two runs to each other again.
    loose = compare(runs / "a", runs / "c", vm_tol=1.0, loading_tol=1e3, p_tol=1.0)
    assert loose.equal, render(loose)


def test_baseline_round_trip_and_robust_to_extra_columns_and_events(runs, tmp_path) -> None:
    bl = write_baseline(runs / "a", tmp_path / "bl")
    files = sorted(p.name for p in bl.iterdir())
    assert files == ["baseline.json", "elements.csv", "events.csv", "states.csv", "steps.csv"]
    size = sum(p.stat().st_size for p in bl.iterdir())
    assert size < (runs / "a" / "timeseries.parquet").stat().st_size
    assert json.loads((bl / "baseline.json").read_text())["scenario"] == "relay_trip_modbus"
    cmp = compare(bl, runs / "b")
    assert cmp.equal, render(cmp)
    assert not compare(bl, runs / "c").equal
    # A run that records more (a new column, a new event kind) still matches the baseline.
    import pandas as pd

    d = tmp_path / "more"
    d.mkdir()
    for f in (runs / "b").iterdir():
        if f.is_file():
            (d / f.name).write_bytes(f.read_bytes())
    ts = pd.read_parquet(d / "timeseries.parquet")
    ts["quality.bus.vm_pu[N1]"] = 1.0
    ts.to_parquet(d / "timeseries.parquet")
    with open(d / "events.csv", "a", encoding="utf-8") as fh:
        fh.write('30,link_quality,"a kind the baseline does not know","{""link"": ""modbus""}"\n')
    cmp = compare(bl, d)
    assert cmp.equal, render(cmp)
    assert any("link_quality" in n for n in cmp.notes)
    # ... but a missing switching event is a difference, named with element and time.
    ev = pd.read_csv(d / "events.csv", keep_default_na=False)
    ev[ev.kind != "switch_close"].to_csv(d / "events.csv", index=False)
    cmp = compare(bl, d)
    assert [(x.what, x.element, x.time_s) for x in cmp.differences] == [("event", "Q45", 600.0)]


def test_time_tolerance_aligns_shifted_events(runs, tmp_path) -> None:
    import pandas as pd

    d = tmp_path / "shifted"
    d.mkdir()
    for f in (runs / "b").iterdir():
        if f.is_file():
            (d / f.name).write_bytes(f.read_bytes())
    ev = pd.read_csv(d / "events.csv", keep_default_na=False)
    ev.loc[ev.kind == "switch_close", "time_s"] += 3.0
    ev.to_csv(d / "events.csv", index=False)
    assert not compare(runs / "a", d, time_tol=1.0).equal
    assert compare(runs / "a", d, time_tol=5.0).equal


def test_bad_input_exits_2_with_a_clear_message(runs, tmp_path, capsys) -> None:
    assert main(["compare", str(tmp_path / "nope"), str(runs / "a")]) == 2
    assert "found no folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(runs / "a"), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["compare", str(runs / "a"), str(runs / "b"), "--time-tol", "soon"])
    assert e.value.code == 2
    assert load_compact(runs / "a").kind == "results"


def test_run_with_baseline_exit_codes(tmp_path, capsys) -> None:
    f = str(LIBRARY / "storm_restoration.toml")
    common = ["--hardware", "none", "--quiet", "--no-report"]
    assert main(["run", f, *common, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["run", f, *common, "--out", str(tmp_path / "b"),
                 "--baseline", str(tmp_path / "a")]) == 0  # fmt: skip
    assert "EQUAL within tolerance" in capsys.readouterr().out
    other = Path(__file__).resolve().parents[2] / "scenarios" / "baselines" / "relay_trip_modbus"
    assert main(["run", f, *common, "--out", str(tmp_path / "c"), "--baseline", str(other)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "differs from the baseline" in out
    assert main(["run", f, *common, "--baseline", str(tmp_path / "nope")]) == 2
    assert "--baseline" in capsys.readouterr().err
