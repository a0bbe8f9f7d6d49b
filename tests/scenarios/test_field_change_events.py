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


def _relay_trip(mode: str, links: tuple[str, ...]) -> list[dict]:
    library = Path(__file__).resolve().parents[2] / "scenarios" / "library"
    sc = load_scenario(library / "relay_trip_modbus.toml")
    sc = dataclasses.replace(sc, mode=mode, links=links, duration=130.0)
    res = run_scenario(sc, write_files=False)
    assert res.error == "", res.error
    return [e for e in res.recorder.events if e["kind"] == "field_change"]


def test_a_relay_trip_names_the_relay_in_hil_over_protocols_and_in_mirror() -> None:
    # over Modbus the RTU scan re-stamps every status each step: the source stays the device
    # that changed it; in mirror mode the emulated plant's relay trips just the same
    for mode, links in (("hil", ("modbus", "opcua")), ("mirror", ("direct",))):
        changes = _relay_trip(mode, links)
        trip = [e for e in changes if e["fields"]["point"] == "Q12.closed"]
        assert len(trip) == 1, (mode, changes)
        assert trip[0]["fields"]["source"] == "device:Q12"
        assert (trip[0]["fields"]["before"], trip[0]["fields"]["after"]) == (1.0, 0.0)
        sources = {e["fields"]["source"] for e in changes}
        assert "device:rtu-scan" not in sources, (mode, sources)
        taps = [e for e in changes if e["fields"]["point"].endswith(".tap_pos")]
        assert all(e["fields"]["source"] == "device:" + e["fields"]["point"][:-8] for e in taps)
