"""Sweeps on a real distributed.LocalCluster (two worker processes, one thread each)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from scenarios.sweep import (  # noqa: E402
    CHUNKS_DIR,
    load_sweep,
    make_client,
    plan_cases,
    run_cases_locally,
    run_sweep,
)
from twin.errors import ConfigError  # noqa: E402

STEADY = """
name = "s14"
grid = "{grid}"
hardware = "none"
duration = "1min"
step = "1min"
[[check]]
kind = "converged"
[[check]]
name = "band"
kind = "voltage_band"
min_pu = 0.95
max_pu = 1.1
[sweep]
run = "steady"
{sweep}
"""

SCENARIO = """
name = "mv_short"
grid = "cigre_mv"
hardware = "{hardware}"
start = "17:00"
duration = "{duration}"
step = "1min"
seed = 5
[[profile]]
name = "homes"
table = "load"
match = "*"
shape = "residential"
[[profile]]
name = "pv"
table = "sgen"
match = "*"
shape = "pv_cloudy"
[[check]]
kind = "converged"
[[check]]
name = "band"
kind = "voltage_band"
min_pu = 0.9
max_pu = 1.1
[[check]]
name = "lines"
kind = "line_loading"
max_percent = 100
[sweep]
{sweep}
"""

COMPARED = ("worst_vm_pu", "max_vm_pu", "worst_loading_percent", "converged", "error")


@pytest.fixture(scope="module")
def client():
    c = make_client(workers=2)  # a LocalCluster of 2 processes, 1 thread each, on 127.0.0.1
    cluster = c.cluster
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _none(v):
    """NaN and None both mean "no value" (a table column turns None into NaN)."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _same(rows_a, rows_b) -> None:
    a = {r["case"]: r for r in rows_a}
    b = {r["case"]: r for r in rows_b}
    assert set(a) == set(b)
    for case, ra in a.items():
        rb = b[case]
        for col in COMPARED + tuple(k for k in ra if k.startswith("check.")):
            va, vb = _none(ra.get(col)), _none(rb.get(col))
            if isinstance(va, float) and isinstance(vb, float):
                assert va == pytest.approx(vb, abs=1e-9), (case, col)
            else:
                assert (va or "") == (vb or ""), (case, col, va, vb)


# --- the [sweep] section --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sweep", "key", "says"),
    [
        ("colour = 1", "sweep.colour", "allowed keys"),
        ('run = "slow"', "sweep.run", "scenario, steady"),
        ("seeds = 0", "sweep.seeds", "positive integer"),
        ('n-1 = "some"', "sweep.n-1", '"all", "lines", "trafos"'),
        ('n-1 = ["nope"]', "sweep.n-1", "no line or trafo labelled 'nope'"),
        ("[sweep.grid]\nwind_share = [1.0]", "sweep.grid.wind_share", "pv_share, ev_share"),
        ("[sweep.grid]\npv_share = 1.0", "sweep.grid.pv_share", "non-empty list"),
        ('[sweep.grid]\n"profile.homes.scale" = [1.0]', "sweep.grid.profile.homes.scale",
         "not available with run = 'steady'"),
        ("[sweep.grid]\nev_share = [2.0]", "sweep.grid.ev_share", 'category "ev"'),
    ],
)  # fmt: skip
def test_bad_sweep_section_names_file_key_and_allowed(tmp_path, sweep, key, says):
    text = STEADY.format(grid="ieee14", sweep=sweep)
    if sweep.startswith("run"):
        text = text.replace('run = "steady"\n', "", 1)
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        sc, spec = load_sweep(p)
        plan_cases(sc, spec)
    assert str(p) in str(err.value)
    assert err.value.key == key
    assert says in str(err.value)


def test_scenario_file_without_sweep_and_line_numbers_kept(tmp_path):
    text = STEADY.format(grid="ieee14", sweep="seeds = 2").replace('step = "1min"', 'step = "x"')
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(p)
    assert err.value.key == "step" and err.value.line == 6


def test_cases_are_the_product(tmp_path):
    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "trafos"\nseeds = 2\n'
                                       "[sweep.grid]\nload_scale = [1.0, 1.2, 1.4]"))  # fmt: skip
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    assert len(cases) == 5 * 2 * 3
    assert len({c.id for c in cases}) == len(cases)
    assert {c.outage[0] for c in cases if c.outage} == {"trafo"}


# --- steady fast path -----------------------------------------------------------------------
def test_steady_n1_on_cluster_equals_one_by_one_and_pandapower(tmp_path, client):
    import pandapower as pp

    import grids

    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "all"\nchunk = 7\n'
                                       "[sweep.grid]\nload_scale = [1.0, 1.3]"))  # fmt: skip
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    res = run_sweep(sc, spec, tmp_path / "out", client=client)
    assert len(res.table) == len(cases) == 2 * 20
    assert (res.table["error"] == "").all()
    assert set(res.table["worker"]) and len(set(res.table["worker"])) <= 2
    _same(res.table.to_dict("records"), run_cases_locally(sc, spec, cases))
    # an independent reference: pandapower on the outaged, scaled net
    for case in (cases[2], cases[-1]):
        net = grids.load("ieee14")
        f = case.param("load_scale")
        net.load["p_mw"] *= f
        net.load["q_mvar"] *= f
        table, label = case.outage
        net[table].loc[int(label.removeprefix(table)), "in_service"] = False
        pp.runpp(net, lightsim2grid=False)
        row = res.table.set_index("case").loc[case.id]
        assert row["worst_vm_pu"] == pytest.approx(net.res_bus.vm_pu.min(), abs=1e-6)
        top = max(net.res_line.loading_percent.max(), net.res_trafo.loading_percent.max())
        assert row["worst_loading_percent"] == pytest.approx(top, abs=1e-4)
    # a worker builds the compiled model once per grid, never per case (6 chunks, 2 workers)
    builds = client.run(lambda: __import__("scenarios.sweep").sweep.MODEL_BUILDS)
    assert all(n <= 1 for n in builds.values()), builds
    out = tmp_path / "out"
    assert (out / "results.parquet").is_file() and (out / "summary.json").is_file()
    assert res.summary["cases"] == 40 and res.summary["ranking"]


def test_steady_monte_carlo_draws_are_per_seed(tmp_path, client):
    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep="seeds = 6\nsigma = 0.2\nchunk = 2"))
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    res = run_sweep(sc, spec, tmp_path / "out", client=client)
    _same(res.table.to_dict("records"), run_cases_locally(sc, spec, cases))
    assert res.table["worst_loading_percent"].nunique() == 6  # each seed its own draw


def test_a_case_that_raises_is_recorded(tmp_path, client):
    import pandapower as pp

    import grids

    net = grids.load("ieee14")
    net.line.loc[3, "in_service"] = False
    pp.to_json(net, str(tmp_path / "g.json"))
    p = _write(tmp_path, STEADY.format(grid="g.json", sweep='n-1 = ["line0", "line3", "line5"]'))
    sc, spec = load_sweep(p)
    res = run_sweep(sc, spec, tmp_path / "out", client=client)
    t = res.table.set_index("outage")
    assert "in_service" in t.loc["line:line3", "error"]
    assert t.loc["line:line0", "error"] == "" and t.loc["line:line5", "error"] == ""
    assert bool(t.loc["line:line0", "converged"])
    assert not bool(t.loc["line:line3", "passed"])
    assert res.summary["errors"] == 1
    assert res.summary["ranking"][0]["outage"] == "line:line3"


# --- scenario sweeps ------------------------------------------------------------------------
def test_scenario_sweep_equals_one_by_one(tmp_path, client):
    sweep = 'seeds = 2\nn-1 = ["Line 1-2"]\n[sweep.grid]\nload_scale = [1.0, 1.5]'
    p = _write(tmp_path, SCENARIO.format(hardware="emulated", duration="4min", sweep=sweep))
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    assert len(cases) == 4
    res = run_sweep(sc, spec, tmp_path / "out", client=client, keep_runs=True)
    rows = res.table.to_dict("records")
    assert all(r["error"] == "" for r in rows), [r["error"] for r in rows]
    assert all(r["steps"] == 5 for r in rows)
    _same(rows, run_cases_locally(sc, spec, cases))
    # the parameter changes the case: heavier loads give a lower worst voltage
    t = res.table.set_index("case")
    assert t.loc[cases[1].id, "worst_vm_pu"] < t.loc[cases[0].id, "worst_vm_pu"]
    for r in rows:  # --keep-runs: one folder per case, never shared
        assert (Path(r["run_dir"]) / "summary.json").is_file()
    assert len({r["run_dir"] for r in rows}) == 4
    assert "worst_vm_time_s" in t.columns and np.isfinite(t["worst_loading_time_s"]).all()


def test_scenario_case_that_raises_is_recorded(tmp_path, client):
    # a hardware file whose device does not answer (nothing listens on port 9): the field
    # fails to connect inside the case, a run-time error the sweep cannot see up front
    (tmp_path / "hardware.toml").write_text(
        '[[device]]\nname = "gone"\npoints = ["*"]\n[device.opcua]\n'
        'endpoint = "opc.tcp://127.0.0.1:9/"\ntimeout_s = 1\n'
    )
    sweep = "seeds = 2"
    p = _write(tmp_path, SCENARIO.format(hardware="hardware.toml", duration="2min", sweep=sweep))
    sc, spec = load_sweep(p)
    res = run_sweep(sc, spec, tmp_path / "out", client=client)
    assert len(res.table) == 2
    errors = res.table["error"].tolist()
    assert all("opc.tcp://127.0.0.1:9/" in e for e in errors), errors
    assert not res.table["converged"].any() and not res.table["passed"].any()
    assert res.failed == 2 and res.summary["errors"] == 2


@pytest.mark.parametrize(
    ("hardware", "key", "says"),
    [
        ("emulated", "setpoint.PV 3.p_limit_pc", "did you mean 'PV 3.p_limit_pct'"),
        ("emulated", "setpoint.NO_SUCH_POINT", "no writable setpoint or command point"),
        ("emulated", "setpoint.Bus 1.vm_pu", "no writable setpoint or command point"),
        ("none", "setpoint.PV 3.p_limit_pct", 'found hardware = "none"'),
        ("none", "profile.hmoes.scale", "did you mean 'homes'"),
        ("none", "pv_shares", "did you mean 'pv_share'"),
    ],
)
def test_parameter_names_checked_before_any_case(tmp_path, capsys, hardware, key, says):
    from scenarios.cli import main

    sweep = f'[sweep.grid]\n"{key}" = [1.0]'
    p = _write(tmp_path, SCENARIO.format(hardware=hardware, duration="2min", sweep=sweep))
    with pytest.raises(ConfigError) as err:
        sc, spec = load_sweep(p)
        plan_cases(sc, spec)
    assert err.value.key == f"sweep.grid.{key}" and says in str(err.value)
    out = tmp_path / "out"
    assert main(["sweep", str(p), "--out", str(out), "--no-progress"]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # refused before any case ran (no cluster, no folder)


def test_killed_worker_loses_no_results(tmp_path, client):
    sweep = "seeds = 6\nchunk = 1\nretries = 1"
    p = _write(tmp_path, SCENARIO.format(hardware="none", duration="40min", sweep=sweep))
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    pids = list(client.run(os.getpid).values())
    killed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done >= 1 and not killed:  # the first result is in: kill a worker mid-sweep
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    res = run_sweep(sc, spec, tmp_path / "out", client=client, progress=progress)
    assert killed
    assert sorted(res.table["case"]) == sorted(c.id for c in cases)
    assert (res.table["error"] == "").all(), res.table["error"].tolist()
    _same(res.table.to_dict("records"), run_cases_locally(sc, spec, cases))
    client.wait_for_workers(2, timeout=60)


def test_resume_skips_done_cases(tmp_path, client):
    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "lines"\nchunk = 5'))
    sc, spec = load_sweep(p)
    out = tmp_path / "out"
    first = run_sweep(sc, spec, out, client=client)
    files = sorted((out / CHUNKS_DIR).glob("chunk-*.parquet"))
    assert len(files) == 3
    files[1].unlink()  # as if the sweep had stopped before this chunk finished
    seen: list[tuple[int, int]] = []
    again = run_sweep(sc, spec, out, client=client, progress=lambda d, n: seen.append((d, n)))
    assert again.skipped == 10
    assert seen[0] == (10, 15) and seen[-1] == (15, 15)
    _same(first.table.to_dict("records"), again.table.to_dict("records"))
    # nothing left to do: no cluster needed, same table
    done = run_sweep(sc, spec, out)
    assert done.skipped == 15 and len(done.table) == 15
    # a different sweep in the same folder is refused
    p.write_text(p.read_text().replace('n-1 = "lines"', 'n-1 = "trafos"'))
    sc2, spec2 = load_sweep(p)
    with pytest.raises(ConfigError, match="different sweep"):
        run_sweep(sc2, spec2, out, client=client)


# --- the command line -----------------------------------------------------------------------
def test_cli_sweep_on_an_existing_scheduler(tmp_path, client, capsys):
    import pandas as pd

    from scenarios.cli import main

    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "trafos"'))
    out = tmp_path / "out"
    code = main(["sweep", str(p), "--scheduler", client.scheduler.address, "--out", str(out),
                 "--grid", "load_scale=1.0,1.3", "--no-progress"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "10 cases" in text and "worst cases" in text
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 10 and set(table["param.load_scale"]) == {1.0, 1.3}
    summary = (out / "summary.json").read_text()
    assert '"ranking"' in summary and '"worst_vm_pu"' in summary


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from scenarios.cli import main

    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "trafos"'))
    assert main(["sweep", str(p), "--grid", "pv_share=a,b"]) == 2
    assert "--grid" in capsys.readouterr().err
    assert main(["sweep", str(p), "--scheduler", "tcp://127.0.0.1:9", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


def test_run_and_validate_accept_a_file_with_a_sweep_section(tmp_path, capsys):
    from scenarios.cli import main
    from scenarios.config import load_scenario

    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "trafos"\n[sweep.grid]\n'
                                       "load_scale = [1.0]"))  # fmt: skip
    assert load_scenario(p).grid == "ieee14"
    assert main(["validate", str(p)]) == 0


def test_steady_pv_and_ev_shares_move_the_result(tmp_path):
    import grids

    net = grids.load("urban_district")
    assert (net.load["category"] == "ev").any() and len(net.sgen)
    sweep = "[sweep.grid]\nev_share = [0.0, 3.0]\npv_share = [0.0, 1.0]"
    p = _write(tmp_path, STEADY.format(grid="urban_district", sweep=sweep))
    sc, spec = load_sweep(p)
    cases = plan_cases(sc, spec)
    rows = {(r["param.ev_share"], r["param.pv_share"]): r
            for r in run_cases_locally(sc, spec, cases)}  # fmt: skip
    assert len(rows) == 4 and all(r["error"] == "" and r["converged"] for r in rows.values())
    # more EV charging: a lower worst voltage; PV output on the feeders: a higher one
    assert rows[(3.0, 0.0)]["worst_vm_pu"] < rows[(0.0, 0.0)]["worst_vm_pu"]
    assert rows[(0.0, 1.0)]["max_vm_pu"] > rows[(0.0, 0.0)]["max_vm_pu"]


def test_cli_dry_run_lists_cases(tmp_path, capsys):
    from scenarios.cli import main

    p = _write(tmp_path, STEADY.format(grid="ieee14", sweep='n-1 = "trafos"\nseeds = 2'))
    assert main(["sweep", str(p), "--dry-run", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "10 cases" in out and "c000000: outage trafo trafo0, seed 0" in out
    assert "and 7 more" in out


def test_sweep_section_errors_carry_the_line(tmp_path):
    text = STEADY.format(grid="ieee14", sweep="seeds = 2\ncolour = 1")
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep(p)
    lines = text.splitlines()
    assert err.value.key == "sweep.colour"
    assert lines[err.value.line - 1] == "colour = 1"
