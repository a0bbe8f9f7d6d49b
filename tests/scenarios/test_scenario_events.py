"""Every event kind against the emulated substation: each acts and none errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scenarios.config import loads_scenario
from scenarios.engine import run_scenario

HERE = Path(__file__).resolve().parent

ALL_EVENTS = """
name = "all_events"
grid = "urban_district"
start = "12:00"
duration = "12min"
step = "1min"
seed = 5

[[profile]]
table = "sgen"
match = "PV_*"
shape = "pv_clear"

[[event]]
kind = "gen_step"
match = "PV_N2_*"
factor = 0.5
at = "12:01"
duration = "2min"

[[event]]
kind = "trafo_outage"
element = "TD_N3"
at = "12:01"
duration = "3min"

[[event]]
kind = "der_trip"
element = "PV_N5_F1_B1"
at = "12:02"
duration = "5min"

[[event]]
kind = "tap_change"
element = "T1"
delta = 1
at = "12:02"

[[event]]
kind = "setpoint"
point = "T1.avr_auto"
value = 0
at = "12:01:30"

[[event]]
kind = "meas_noise"
point = "N3.vm_pu"
sigma = 0.001
at = "12:03"
duration = "2min"

[[event]]
kind = "device_restart"
device = "T1"
at = "12:05"

[[event]]
kind = "comms_loss"
target = "PV_N6_F1_B1"
at = "12:04"

[[event]]
kind = "comms_restore"
target = "PV_N6_F1_B1"
at = "12:06"

[[event]]
kind = "process"
function = "scenario_user_process:ring_closer"
at = "12:07"

[[check]]
kind = "converged"

[[check]]
kind = "switch_state"
element = "Q45"
closed = true
at = "12:09"

[[check]]
name = "pv_n5_tripped"
kind = "field_value"
point = "PV_N5_F1_B1.p_mw"
at = "12:04"
max = 0.0

[[check]]
name = "pv_n5_back"
kind = "field_value"
point = "PV_N5_F1_B1.p_mw"
at = "12:12"
min = 0.001
"""


@pytest.fixture
def user_module_path():
    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))
    sys.modules.pop("scenario_user_process", None)


def test_every_event_kind_acts(user_module_path) -> None:
    res = run_scenario(loads_scenario(ALL_EVENTS), write_files=False)
    kinds = [e["kind"] for e in res.recorder.events]
    assert "event_error" not in kinds, [
        e for e in res.recorder.events if e["kind"] == "event_error"
    ]
    for k in (
        "sgen_outage",
        "trafo_outage",
        "trafo_return",
        "tap_change",
        "setpoint",
        "meas_noise",
        "device_restart",
        "comms_loss",
        "comms_restore",
        "process",
        "user",
    ):
        assert k in kinds, k
    failed = [f"{c.name}: {c.message}" for c in res.checks if not c.passed]
    assert failed == []
    df = res.recorder.to_frame()
    tap = df["trafo.tap_pos[T1]"].to_numpy()
    assert tap[3] == tap[1] + 1  # the manual tap change reached the twin through the field
    assert df["trafo.avr_auto[T1]"].iloc[-1] == 0.0
    # the trafo outage shows in the model: no flow while out (pandapower reports no loading,
    # NaN, for an out-of-service trafo; plain Solution.get keeps that)
    assert np.isnan(df["trafo.loading_percent[TD_N3]"].iloc[2])
    assert df["trafo.loading_percent[TD_N3]"].iloc[6] > 0.0


FAULT_OFF_GRID = """
name = "fault_between_steps"
grid = "urban_district"
start = "12:00"
duration = "6min"
step = "1min"
seed = 1

[[event]]
kind = "fault"
element = "L_N1_N2"
current_ka = 4.0
at = "12:02:30"

[[check]]
name = "q12_open_at_next_step"
kind = "switch_state"
element = "Q12"
closed = false
at = "12:03"
"""


def test_device_timers_resolve_exactly_with_one_minute_steps() -> None:
    """A fault between two 1-min steps: the relay trips 0.5 s after it, not at a step."""
    sc = loads_scenario(FAULT_OFF_GRID)
    assert sc.links == ("direct", "modbus")  # the default: statuses over Modbus TCP
    res = run_scenario(sc, write_files=False)
    assert res.passed, [c.message for c in res.checks]
    cleared = [e for e in res.recorder.events if e["kind"] == "fault_cleared"]
    assert len(cleared) == 1 and cleared[0]["time_s"] == pytest.approx(150.5)
    field = res.summary["field"]
    # discrete-event device time: a few device rounds per step, not a 50 ms tick
    assert field["devices"]["rounds"] <= 3 * res.steps + 10
    # the breaker position reached the twin over Modbus: the in-process link reads nothing
    (modbus,) = [v for k, v in field["links"].items() if k.startswith("modbus:")]
    assert modbus["reads"] >= res.steps and modbus["errors"] == 0
    assert field["links"]["direct"]["reads"] == 0
