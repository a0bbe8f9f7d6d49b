"""Events that fail at run time are event errors, never tracebacks; DER trip without hardware."""

from __future__ import annotations

import json

from scenarios.config import loads_scenario
from scenarios.engine import run_scenario

BASE = """
name = "t"
grid = "urban_district"
hardware = "none"
start = "12:00"
duration = "30s"
step = "5s"

[record]
quantities = ["sgen.p_mw[PV_N1_F1_B2]", "sgen.q_mvar[PV_N1_F1_B2]"]

[[check]]
kind = "converged"
"""


def test_der_trip_without_hardware_zeroes_and_restores_the_inverters() -> None:
    sc = loads_scenario(
        BASE + '\n[[event]]\nkind = "der_trip"\nmatch = "PV_N1_*"\nat = "+10s"\nduration = "10s"\n'
    )
    res = run_scenario(sc, write_files=False)
    assert res.error == "" and res.passed
    kinds = [e["kind"] for e in res.recorder.events]
    assert "sgen_outage" in kinds and "sgen_return" in kinds and "event_error" not in kinds
    p = res.recorder.column("sgen.p_mw[PV_N1_F1_B2]").tolist()
    assert p[1] > 0 and p[2] == 0.0 and p[3] == 0.0 and p[4] == p[1]


def _raise_in_process(env, twin):
    yield env.timeout(5)
    twin.index("switch", "no-such-breaker")  # ConfigError, an attributed error of our tree


def test_a_failing_user_process_is_an_event_error_and_the_run_goes_on() -> None:
    sc = loads_scenario(
        BASE
        + '\n[[event]]\nkind = "process"\nat = "+5s"\n'
        + f'function = "{__name__}:_raise_in_process"\n'
    )
    res = run_scenario(sc, write_files=False)
    assert res.error == ""
    assert res.steps == 7
    errs = [e for e in res.recorder.events if e["kind"] == "event_error"]
    assert len(errs) == 1 and "no switch named 'no-such-breaker'" in errs[0]["message"]
    assert json.loads(json.dumps(errs[0]["fields"]))["event"] == "process"
