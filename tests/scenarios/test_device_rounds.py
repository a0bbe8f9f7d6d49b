"""Bundled scenarios give the same results with batched device rounds as stepped one by one.

``EmulatedSubstation`` steps its devices with ``DeviceRound`` (the inverters as numpy arrays);
``_SequentialRound`` steps every device by its own ``step``, the reference. Both runs of a
scenario must record the same time series (bit for bit), events, alarms and check results.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

import hil.emulator.devices as devices_mod
from hil.emulator.substation import _SequentialRound
from scenarios.config import load_scenario
from scenarios.engine import run_scenario

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios" / "library"


def _run(name: str, duration_s: float) -> tuple:
    sc = load_scenario(LIBRARY / f"{name}.toml")
    sc = dataclasses.replace(sc, duration=duration_s)
    res = run_scenario(sc, write_files=False)
    assert res.error == "", res.error
    rec = res.recorder
    series = {n: rec.column(n).tolist() for n in rec.names}
    events = [(e["time_s"], e["kind"], e["message"]) for e in rec.events if e["kind"] != "field"]
    alarms = [tuple(sorted(a.items())) for a in rec.alarms]
    checks = [(c.name, c.passed, c.message) for c in res.checks]
    return series, events, alarms, checks


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    ("name", "duration_s"),
    [("pv_midday_voltvar", 20 * 60.0), ("comms_loss", 45 * 60.0)],
)
def test_batched_rounds_give_the_same_results(name, duration_s, monkeypatch):
    batched = _run(name, duration_s)
    monkeypatch.setattr(devices_mod, "DeviceRound", _SequentialRound)
    one_by_one = _run(name, duration_s)
    sa, sb = batched[0], one_by_one[0]
    assert list(sa) == list(sb)
    bad = [n for n in sa if not _same(sa[n], sb[n])]
    assert bad == [], bad[:10]
    assert batched[1:] == one_by_one[1:]
    # the inverters did move: a test of a flat line would prove nothing
    moving = [n for n in sa if ".p_mw" in n and len(set(sa[n])) > 2]
    assert moving, [n for n in sa if "sgen" in n][:5]
