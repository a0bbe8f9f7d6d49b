"""CI holds every bundled scenario to its stored baseline (scenarios/baselines/<name>/).

Refresh one on purpose with ``gridtwin baseline update NAME`` (see docs/report.md); the diff of
the refreshed CSV/JSON files is what a reviewer reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.compare import BASELINES_DIR, compare, render
from scenarios.engine import run_scenario

LIB = Path(__file__).resolve().parents[2] / "scenarios" / "library"
NAMES = sorted(p.stem for p in LIB.glob("*.toml"))
LONG = {"city_day", "avr_load_ramp", "pv_midday_voltvar", "storm_restoration"}


def test_every_bundled_scenario_has_a_baseline() -> None:
    assert NAMES
    missing = [n for n in NAMES if not (BASELINES_DIR / n / "baseline.json").is_file()]
    assert not missing, f"no baseline for {missing}: run `gridtwin baseline update NAME`"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow, pytest.mark.timeout(1200)]) if n in LONG
             else pytest.param(n, marks=pytest.mark.timeout(600)) for n in NAMES],
)  # fmt: skip
def test_bundled_scenario_matches_its_baseline(name: str, tmp_path: Path) -> None:
    res = run_scenario(LIB / f"{name}.toml", out_dir=tmp_path / name)
    assert res.passed, [c.message for c in res.checks if not c.passed] or res.error
    cmp = compare(BASELINES_DIR / name, tmp_path / name)
    assert cmp.equal, render(cmp)
