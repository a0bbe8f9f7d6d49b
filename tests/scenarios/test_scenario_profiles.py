"""Profiles: built-in day shapes, CSV files, interpolation, scaling and element selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import grids
from scenarios.config import ProfileSpec
from scenarios.profiles import builtin_shape, read_csv_profile, resolve_profile, select_elements
from twin.errors import ConfigError


@pytest.fixture(scope="module")
def net():
    return grids.load("urban_district")


@pytest.mark.parametrize(
    "name", ["residential", "commercial", "industrial", "ev_evening", "pv_clear", "pv_cloudy"]
)
def test_builtin_shapes_are_normalised_days(name: str) -> None:
    t, v = builtin_shape(name, seed=1)
    assert t[0] == 0 and t[-1] == 86400
    assert 0.0 <= v.min() and v.max() <= 1.0 + 1e-12
    assert np.all(np.diff(t) > 0)


def test_pv_is_dark_at_night_and_peaks_at_noon() -> None:
    t, v = builtin_shape("pv_clear")
    assert np.interp(2 * 3600, t, v) == 0.0
    assert np.interp(12 * 3600, t, v) == pytest.approx(1.0)


def test_cloudy_pv_is_seeded() -> None:
    a = builtin_shape("pv_cloudy", seed=3)[1]
    b = builtin_shape("pv_cloudy", seed=3)[1]
    c = builtin_shape("pv_cloudy", seed=4)[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_csv_profile_seconds_and_clock(tmp_path: Path) -> None:
    f = tmp_path / "p.csv"
    f.write_text("time,value\n0,1\n600,3\n")
    t, v, periodic = read_csv_profile(f)
    assert list(t) == [0, 600] and list(v) == [1, 3] and not periodic
    g = tmp_path / "q.csv"
    g.write_text("00:00,1\n12:00,2\n")
    assert read_csv_profile(g)[2] is True
    h = tmp_path / "r.csv"
    h.write_text("0,1\n10,x\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_csv_profile(h)
    k = tmp_path / "s.csv"
    k.write_text("10,1\n5,2\n")
    with pytest.raises(ConfigError, match="increasing"):
        read_csv_profile(k)


def test_scale_mode_interpolation_and_q_following(net, tmp_path: Path) -> None:
    f = tmp_path / "ramp.csv"
    f.write_text("0,1\n100,3\n")
    spec = ProfileSpec(name="r", table="load", category="residential", csv=f, scale=2.0)
    prof = resolve_profile(spec, net, start_sod=0.0, seed=0)
    assert prof.index.size == 57
    assert prof.factor(50) == pytest.approx(4.0)  # (1 + 2*50/100) * 2
    assert prof.factor(1000) == pytest.approx(6.0)  # held after the last sample
    p, q = prof.targets(50)
    assert np.allclose(p, prof.base_p * 4.0) and np.allclose(q, prof.base_q * 4.0)
    step = ProfileSpec(name="s", table="load", category="residential", csv=f, interpolation="step")
    assert resolve_profile(step, net, start_sod=0.0, seed=0).factor(99) == 1.0


def test_absolute_mode_and_periodic_wrap(net) -> None:
    spec = ProfileSpec(
        name="pv", table="sgen", match="PV_*", shape="pv_clear", mode="absolute", scale=0.02
    )
    prof = resolve_profile(spec, net, start_sod=12 * 3600, seed=0)
    p, q = prof.targets(0.0)
    assert np.allclose(p, 0.02) and q is None
    assert prof.factor(12 * 3600) == pytest.approx(0.0)  # midnight, a day wrap later


def test_element_selection(net) -> None:
    assert len(select_elements(net, "sgen", match="PV_N1_*")) == 4
    assert select_elements(net, "load", elements=["MV_OTHER_FEEDERS"]) == [0]
    assert len(select_elements(net, "load", category="ev")) == 23
    with pytest.raises(KeyError):
        select_elements(net, "load", elements=["nope"])
