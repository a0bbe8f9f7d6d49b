"""The live terminal view: drawn on a terminal (rich capture with force_terminal), quiet else."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from rich.console import Console

from scenarios.config import load_scenario
from scenarios.engine import run_scenario
from scenarios.live import LiveView, link_quality

LIB = Path(__file__).resolve().parents[2] / "scenarios" / "library"


def _short():
    sc = load_scenario(LIB / "storm_restoration.toml")
    return dataclasses.replace(sc, hardware="none", duration=600.0)


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=140, color_system=None), buf


def test_progress_bar_shows_sim_time_rate_and_eta_during_a_real_run() -> None:
    sc = _short()
    con, buf = _console(True)
    with LiveView(con, name=sc.name, total=sc.steps + 1, start_sod=sc.start_sod) as live:
        res = run_scenario(sc, write_files=False, progress=live.progress, on_step=live.on_step)
    out = buf.getvalue()
    assert res.steps == sc.steps + 1
    assert f"{sc.steps + 1}/{sc.steps + 1} steps" in out
    assert "sim 13:10:00" in out  # start 13:00 + 600 s
    assert "steps/s" in out and "ETA" in out
    assert "worst V" not in out  # the table is for realtime pace only
    assert live.state["done"] == sc.steps + 1 and live.state["vm_min"] > 0.8


def test_realtime_table_shows_worst_voltage_loading_alarms_link_quality_and_lag() -> None:
    sc = dataclasses.replace(_short(), pace="realtime", speed=600.0)
    con, buf = _console(True)
    with LiveView(con, name=sc.name, total=sc.steps + 1, start_sod=sc.start_sod,
                  realtime=True) as live:  # fmt: skip
        run_scenario(sc, write_files=False, progress=live.progress, on_step=live.on_step)
    out = buf.getvalue()
    for head in ("worst V (pu)", "worst loading", "alarms", "link quality", "lag"):
        assert head in out, head
    s = live.state
    assert f"{s['vm_min']:.4f} .. {s['vm_max']:.4f}" in out
    assert f"{s['loading_max']:.1f} %" in out
    assert "no field links" in out  # hardware none: no links to report


def test_quiet_when_not_a_terminal_or_asked() -> None:
    sc = _short()
    for terminal, enabled in ((False, True), (True, False)):
        con, buf = _console(terminal)
        with LiveView(con, name=sc.name, total=sc.steps + 1, enabled=enabled) as live:
            assert not live.shown
            live.progress(1, 2, 0.0)
            live.on_step({"done": 1})
        assert buf.getvalue() == ""
        assert live.state == {}


def test_link_quality_line() -> None:
    stats = {"links": {"modbus:127.0.0.1:1502": {"errors": 2, "reconnects": 1},
                       "opcua:opc.tcp://x": {"errors": 0, "reconnects": 0}}}  # fmt: skip
    assert link_quality(stats) == "modbus 2 err, 1 reconn; opcua ok"
    assert link_quality({}) == "no field links"
