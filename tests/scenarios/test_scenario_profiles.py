"""Profiles: built-in day shapes, CSV files, interpolation, scaling and element selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import grids
from scenarios.config import ProfileSpec
from scenarios.profiles import (
    assert_profile_csv,
    builtin_shape,
    check_profile_csv,
    read_csv_profile,
    resolve_profile,
    select_elements,
)
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


# --- CSV checking: every problem names the file, line, column, what was expected and found -----

BAD_CSV = [
    ("nan", "0,1\n60,nan\n", 2, "column 2 (value)", "expected a finite number, found 'nan'"),
    ("inf", "0,1\n60,inf\n", 2, "column 2 (value)", "expected a finite number, found 'inf'"),
    ("empty_value", "0,1\n60,\n", 2, "column 2 (value)", "found an empty cell"),
    ("third_column", "0,1,5\n", 1, "column 3 (extra)", "expected two columns: time, value"),
    ("header_three", "time,value,unit\n0,1\n", 1, "column 3 (extra)", "3 columns"),
    ("one_column", "0\n", 1, "line 1", "found one column '0'"),
    ("semicolon", "0;1\n60;2\n", 1, "line 1", "separated by ';'"),
    ("decreasing", "0,1\n60,2\n30,3\n", 3, "column 1 (time)", "found '30' after '60' (line 2)"),
    ("repeated", "00:00,1\n00:00,2\n", 2, "column 1 (time)", "expected increasing times"),
    ("bad_clock", "00:00,1\n25:00,2\n", 2, "column 1 (time)", "found '25:00'"),
    ("bad_seconds", "0,1\nabc,2\n", 2, "column 1 (time)", "found 'abc'"),
    ("nan_time", "0,1\nnan,2\n", 2, "column 1 (time)", "finite number of seconds"),
    ("mixed", "0,1\n00:10,2\n", 2, "column 1 (time)", "one time format in the whole file"),
    ("value_text", "0,1\n60,1.2.3\n", 2, "column 2 (value)", "found '1.2.3'"),
    ("clock_then_text", "12:00,abc\n", 1, "column 2 (value)", "found 'abc'"),
]


@pytest.mark.parametrize(
    ("name", "text", "line", "key", "text_in"), BAD_CSV, ids=[c[0] for c in BAD_CSV]
)
def test_bad_csv_names_line_column_expected_found(
    tmp_path: Path, name: str, text: str, line: int, key: str, text_in: str
) -> None:
    f = tmp_path / f"{name}.csv"
    f.write_text(text)
    (p, *_) = check_profile_csv(f)
    assert p.path == str(f) and p.line == line and key in p.key, str(p)
    assert text_in in str(p) and "expected" in str(p), str(p)
    assert str(p).startswith(f"{f}:{line}: line {line}"), str(p)
    with pytest.raises(ConfigError) as info:
        read_csv_profile(f)
    assert info.value.line == line and text_in in str(info.value)
    with pytest.raises(ConfigError):
        assert_profile_csv(f)


@pytest.mark.parametrize(
    ("text", "found"),
    [("", "an empty file"), ("# only a comment\ntime,value\n", "no time,value row")],
)
def test_empty_csv(tmp_path: Path, text: str, found: str) -> None:
    f = tmp_path / "e.csv"
    f.write_text(text)
    (p,) = check_profile_csv(f)
    assert p.line is None and f"expected at least one time,value row, found {found}" in str(p)


def test_binary_and_missing_csv(tmp_path: Path) -> None:
    f = tmp_path / "b.csv"
    f.write_bytes(b"0,1\n\xff\xfe\x00garbage\n")
    (p,) = check_profile_csv(f)
    assert p.line == 2 and "expected UTF-8 text, found the byte 0xff" in str(p)
    (m,) = check_profile_csv(tmp_path / "nope.csv")
    assert "expected a readable CSV file" in str(m)


def test_all_problems_collected_and_first_raised_with_count(tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("0,1\n60,nan\n120,2,3\n-5,4\n")
    problems = check_profile_csv(f)
    assert [p.line for p in problems] == [2, 3, 4]
    with pytest.raises(ConfigError, match=r"\(and 2 more problem\(s\)\)") as info:
        read_csv_profile(f)
    assert info.value.line == 2


def test_good_csv_forms(tmp_path: Path) -> None:
    f = tmp_path / "g.csv"
    f.write_bytes("\ufefftime,value\n# note\n\n00:00,1\n12:00:30,2.5e-1,,\n24:00,1\n".encode())
    assert check_profile_csv(f) == []
    t, v, periodic = read_csv_profile(f)
    assert list(t) == [0, 43230, 86400] and list(v) == [1, 0.25, 1] and periodic
    assert (
        check_profile_csv(Path(__file__).parents[2] / "scenarios/library/avr_load_ramp.csv") == []
    )


def test_validate_reports_a_bad_csv_without_running(tmp_path: Path) -> None:
    from scenarios.validate import validate_file

    (tmp_path / "p.csv").write_text("0,1\n60,nan\n")
    sc = tmp_path / "s.toml"
    sc.write_text(
        'name = "s"\ngrid = "urban_district"\nhardware = "none"\nduration = "2min"\n'
        'step = "1min"\n[[profile]]\ntable = "load"\nmatch = "*"\ncsv = "p.csv"\n'
    )
    _, problems = validate_file(sc)
    assert any("p.csv:2: line 2, column 2 (value): expected a finite number" in p for p in problems)
