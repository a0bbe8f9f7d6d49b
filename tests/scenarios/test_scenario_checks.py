"""Checks never pass on no evidence, and every message names the worst element and its time."""

from __future__ import annotations

import numpy as np
import pytest

from scenarios.checks import StepState, build_check
from scenarios.config import CheckSpec, loads_scenario
from scenarios.engine import run_scenario

LABELS = {
    "bus": ["HV", "N1", "N4_F1_B5", "N9"],
    "line": ["L1", "L2", "L3"],
    "trafo": ["T1"],
    "switch": ["Q1"],
}
START = 17 * 3600.0  # 17:00


def spec(kind: str, window=(0.0, 600.0), **params) -> CheckSpec:
    return CheckSpec(kind, f"{kind}_0", 0, window, tuple(params.items()))


def run(kind: str, states: list[StepState], window=(0.0, 600.0), **params):
    c = build_check(spec(kind, window, **params), LABELS, start_sod=START)
    for st in states:
        c.observe(st)
    return c.result()


def vm(*v: float) -> np.ndarray:
    return np.asarray(v, dtype=float)


def test_voltage_band_nothing_converged_fails_no_data() -> None:
    states = [StepState(t=60.0 * k, converged=False) for k in range(5)]
    r = run("voltage_band", states)
    assert not r.passed and r.no_data
    assert r.message.startswith("no data:"), r.message
    assert "5 not converged" in r.message and r.steps_judged == 0


def test_voltage_band_every_watched_bus_dark_fails_no_data() -> None:
    states = [
        StepState(t=60.0 * k, converged=True, vm_pu=vm(1.0, 1.0, np.nan, np.nan)) for k in range(3)
    ]
    r = run("voltage_band", states, buses=("N4_F1_B5", "N9"))
    assert not r.passed and r.no_data
    assert "every watched bus dark" in r.message, r.message


def test_dark_steps_are_not_counted_as_passed() -> None:
    states = [
        StepState(t=0.0, converged=True, vm_pu=vm(1.0, 0.99, 0.97, 1.0)),
        StepState(t=60.0, converged=True, vm_pu=vm(1.0, np.nan, np.nan, np.nan)),
        StepState(t=120.0, converged=True, vm_pu=vm(1.0, 0.99, 0.98, 1.0)),
    ]
    r = run("voltage_band", states, buses=("N1", "N4_F1_B5", "N9"))
    assert r.passed
    assert r.steps_judged == 2 and r.steps_seen == 3
    assert r.message.startswith("passed on 2 steps (1 more without data"), r.message
    assert "3 bus(es) dark and not judged, first at 17:01:00" in r.message


def test_voltage_band_names_worst_bus_and_clock_time_on_pass_and_fail() -> None:
    states = [
        StepState(t=0.0, converged=True, vm_pu=vm(1.0, 0.99, 0.98, 1.0)),
        StepState(t=17 * 60.0, converged=True, vm_pu=vm(1.0, 0.99, 0.9699, 1.0)),
        StepState(t=18 * 60.0, converged=True, vm_pu=vm(1.0, 0.99, 0.975, 1.0)),
    ]
    ok = run("voltage_band", states, window=(0.0, 3600.0), min_pu=0.95)
    assert ok.passed
    assert "worst N4_F1_B5 0.9699 pu at 17:17:00" in ok.message, ok.message
    assert ok.worst_element == "N4_F1_B5" and ok.worst_at_s == 17 * 60.0
    bad = run("voltage_band", states, window=(0.0, 3600.0), min_pu=0.985)
    assert not bad.passed and not bad.no_data
    assert "first at 17:00:00: bus N4_F1_B5 at 0.9800 pu" in bad.message, bad.message
    assert "worst N4_F1_B5 0.9699 pu at 17:17:00" in bad.message


def test_voltage_band_high_side_is_the_worst_when_further_out() -> None:
    states = [StepState(t=0.0, converged=True, vm_pu=vm(1.0, 1.12, 0.93, 1.0))]
    r = run("voltage_band", states)
    assert not r.passed and r.worst_element == "N1" and r.worst == pytest.approx(1.12)


def test_energized_reports_dark_bus_as_failure_not_no_data() -> None:
    states = [StepState(t=0.0, converged=True, vm_pu=vm(1.0, np.nan, 1.0, 1.0))]
    r = run("voltage_band", states, energized=True)
    assert not r.passed and not r.no_data
    assert "not supplied: N1" in r.message


def test_window_without_a_step_fails_no_data() -> None:
    states = [StepState(t=60.0 * k, converged=True, vm_pu=vm(1, 1, 1, 1)) for k in range(3)]
    for kind in ("voltage_band", "converged", "line_loading", "no_stale", "deadline"):
        r = run(kind, states, window=(10.0, 50.0))
        assert not r.passed and r.no_data, kind
        assert r.message == "no data: no step inside the window 17:00:10..17:00:50", r.message


def test_line_loading_not_converged_and_out_of_service() -> None:
    none = run("line_loading", [StepState(t=0.0, converged=False)])
    assert not none.passed and "1 not converged" in none.message
    dark = [StepState(t=0.0, converged=True, line_loading=vm(np.nan, np.nan, np.nan))]
    r = run("line_loading", dark)
    assert not r.passed and "every watched line out of service" in r.message


def test_line_loading_names_worst_line() -> None:
    states = [
        StepState(t=0.0, converged=True, line_loading=vm(10.0, 50.0, np.nan)),
        StepState(t=120.0, converged=True, line_loading=vm(80.0, 60.0, 5.0)),
    ]
    r = run("line_loading", states, max_percent=100.0)
    assert r.passed and "worst L1 80.0 % at 17:02:00" in r.message, r.message
    f = run("trafo_loading", [StepState(t=0.0, converged=True, trafo_loading=vm(120.0))])
    assert not f.passed and "trafo T1 at 120.0 %, expected <= 100 %" in f.message


def test_converged_counts_and_clock() -> None:
    states = [StepState(t=0.0, converged=True), StepState(t=60.0, converged=False)]
    r = run("converged", states)
    assert not r.passed and r.message == "did not converge on 1 of 2 steps; first at 17:01:00"


def test_no_stale_names_worst_point() -> None:
    states = [
        StepState(t=0.0, converged=True, stale=("A.p_mw",)),
        StepState(t=60.0, converged=True, stale=("A.p_mw", "B.p_mw")),
    ]
    r = run("no_stale", states)
    assert not r.passed and "worst A.p_mw stale on 2 steps, first at 17:00:00" in r.message
    ok = run("no_stale", [StepState(t=0.0, converged=True)])
    assert ok.passed and ok.message == "passed on 1 step; no stale point"


def test_switch_state_after_the_run_fails_no_data() -> None:
    st = [StepState(t=0.0, converged=True, switch_closed=np.array([True]))]
    r = run("switch_state", st, element="Q1", closed=True, at=300.0)
    assert not r.passed and r.message == "no data: the run ended before the check time 17:05:00"
    r = run("switch_state", st, element="Q1", closed=False, at=0.0)
    assert not r.passed and "switch Q1 is closed, expected open" in r.message


def test_without_start_times_are_seconds() -> None:
    c = build_check(spec("converged"), LABELS)
    c.observe(StepState(t=30.0, converged=False))
    assert c.result().message == "did not converge on 1 of 1 step; first at t=30 s"


X10 = """
name = "x10"
grid = "urban_district"
hardware = "none"
start = "17:00"
duration = "2min"
step = "1min"

[[profile]]
name = "all"
table = "load"
match = "*"
shape = "commercial"
scale = 10

[[check]]
kind = "converged"

[[check]]
kind = "voltage_band"

[[check]]
kind = "line_loading"
"""


def test_loads_x10_nothing_converges_no_check_passes() -> None:
    """The issue's case: loads x10, no step converges; voltage_band passed "on 31 steps"."""
    res = run_scenario(loads_scenario(X10), write_files=False)
    by = {c.kind: c for c in res.checks}
    assert not by["converged"].passed
    for kind in ("voltage_band", "line_loading"):
        assert not by[kind].passed and by[kind].no_data, by[kind].message
        assert by[kind].message.startswith("no data:"), by[kind].message
    assert not res.passed


DARK = """
name = "dark"
grid = "urban_district"
hardware = "none"
start = "12:00"
duration = "3min"
step = "1min"

[[event]]
kind = "trafo_outage"
element = "TD_N3"
at = "12:01"

[[check]]
name = "n3_lv"
kind = "voltage_band"
buses = ["N3_F1_B1", "N3_F1_B2"]

[[check]]
name = "all"
kind = "voltage_band"
"""


def test_a_bus_that_goes_dark_is_not_counted() -> None:
    res = run_scenario(loads_scenario(DARK), write_files=False)
    by = {c.name: c for c in res.checks}
    n3 = by["n3_lv"]
    assert n3.passed and n3.steps_seen == 4 and n3.steps_judged == 1, n3.message
    assert "3 more without data: 3 with every watched bus dark" in n3.message
    a = by["all"]
    assert a.passed and a.steps_judged == 4
    assert "bus(es) dark and not judged" in a.message and "N3_LV" in a.message


def test_summary_entry_carries_evidence_fields() -> None:
    states = [StepState(t=0.0, converged=True, vm_pu=vm(1.0, 0.99, 0.97, np.nan))]
    d = run("voltage_band", states).as_dict()
    assert d["worst_element"] == "N4_F1_B5" and d["worst_at_s"] == 0.0
    assert d["steps_seen"] == 1 and d["steps_judged"] == 1 and d["no_data"] is False
    d = run("voltage_band", [StepState(t=0.0, converged=False)]).as_dict()
    assert d["passed"] is False and d["no_data"] is True and d["steps_judged"] == 0
