"""Status changes the field made by itself are events; analog statuses are not."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scenarios.config import load_scenario
from scenarios.engine import run_scenario


def test_inverter_output_is_not_a_field_change_event() -> None:
    # city_day's PV inverters report P and Q as statuses that move every step: those belong in
    # the time series; only breaker and tap positions become field_change events
    library = Path(__file__).resolve().parents[2] / "scenarios" / "library"
    sc = load_scenario(library / "city_day.toml")
    sc = dataclasses.replace(sc, duration=5 * sc.step)
    res = run_scenario(sc, write_files=False)
    changes = [e for e in res.recorder.events if e["kind"] == "field_change"]
    points = {e["fields"]["point"] for e in changes}
    assert all(p.endswith((".closed", ".tap_pos", ".in_service")) for p in points), points
    assert len(changes) <= 5 * 20, len(changes)
