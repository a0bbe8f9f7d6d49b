"""Plausibility limits of the point map: fields, defaults from ratings, checks, validate, and
property tests on point-map files (a loaded map or a clear error naming the file, never a
traceback)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandapower.networks as pn
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenarios.cli import main as cli_main
from twin.errors import PointMapError
from twin.pointmap import (
    check_pointmap,
    dumps_pointmap,
    generate_pointmap,
    loads_pointmap,
    plausibilities,
    plausibility,
)

POINT = """
[[point]]
name = "{name}"
bind = '{bind}'
direction = "{direction}"
kind = "{kind}"
{extra}
[point.modbus]
table = "input_register"
address = {address}
"""


def one(extra: str, *, name="PV 3.p_mw", bind='sgen.p_mw["PV 3"]', direction="to_twin",
        kind="status", address=0) -> str:  # fmt: skip
    return POINT.format(
        name=name, bind=bind, direction=direction, kind=kind, extra=extra, address=address
    )


@pytest.fixture(scope="module")
def cigre():
    return pn.create_cigre_network_mv(with_der="pv_wind")


# --- fields ----------------------------------------------------------------------------------
def test_fields_load_and_round_trip():
    pm = loads_pointmap(one("plausible_min = 0.0\nplausible_max = 0.05\nmax_rate = 0.01"))
    p = pm.points[0]
    assert (p.plausible_min, p.plausible_max, p.max_rate) == (0.0, 0.05, 0.01)
    again = loads_pointmap(dumps_pointmap(pm)).points[0]
    assert again == p


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ("plausible_min = 1.0\nplausible_max = 0.5", "plausible_max", "plausible_max >= "),
        ("max_rate = 0", "max_rate", "a number > 0"),
        ("max_rate = -1.5", "max_rate", "a number > 0"),
        ('plausible_max = "high"', "plausible_max", "a number"),
        ("plausible_min = nan", "plausible_min", "a finite number"),
        ("plausible_mx = 3", "plausible_mx", "unknown key"),
    ],
)
def test_bad_limits_name_file_line_and_key(extra, key, says):
    text = one(extra)
    with pytest.raises(PointMapError) as info:
        loads_pointmap(text, source="pm.toml")
    (problem,) = info.value.problems
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(key))
    assert problem.startswith(f"pm.toml:{line}: point 'PV 3.p_mw': {key}: "), problem
    assert says in problem


# --- defaults from the ratings -----------------------------------------------------------------
def test_defaults_from_ratings(cigre):
    pm = generate_pointmap(cigre, mode="mirror")
    by = {p.name: pl for p, pl in zip(pm.points, plausibilities(cigre, pm.points))}
    pv = cigre.sgen.loc[cigre.sgen.name == "PV 3"].iloc[0]
    assert by["PV 3.p_mw"].high == pytest.approx(10 * pv.sn_mva)
    assert by["PV 3.p_mw"].low == pytest.approx(-10 * pv.sn_mva)
    assert (by["Bus 8.vm_pu"].low, by["Bus 8.vm_pu"].high) == (0.0, 2.0)
    assert by["switch0.closed"].binary and by["switch0.operations"].low == 0.0
    line = next(n for n in by if n.endswith(".loading_percent"))
    assert (by[line].low, by[line].high) == (0.0, 1000.0)
    assert all(pl.max_rate is None for pl in by.values())  # no default rate limit
    # every generated input has finite limits on at least one side
    inputs = [p for p in pm.points if p.direction == "to_twin"]
    assert all(math.isfinite(by[p.name].low) or math.isfinite(by[p.name].high) for p in inputs)


def test_tap_positions_default_to_tap_min_max():
    import pandapower as pp

    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 110.0), pp.create_bus(net, 20.0)
    pp.create_ext_grid(net, b0)
    pp.create_transformer(net, b0, b1, "25 MVA 110/20 kV", name="T1")
    pm = generate_pointmap(net, mode="hil")
    pl = plausibility(net, pm["T1.tap_pos"])
    tr = net.trafo.iloc[0]
    assert (pl.low, pl.high) == (tr.tap_min, tr.tap_max)


def test_the_map_overrides_one_side_or_both(cigre):
    second = one(
        "plausible_min = 0.0\nplausible_max = 0.04",
        name="PV 4.p_mw",
        bind='sgen.p_mw["PV 4"]',
        address=2,
    )
    pm = loads_pointmap(one("plausible_max = 0.05") + second)
    a, b = plausibilities(cigre, pm.points)
    assert a.high == 0.05 and a.low < 0 and a.why.startswith("map; the other side default")
    assert (b.low, b.high, b.why) == (0.0, 0.04, "map")


# --- consistency (check_pointmap, gridtwin validate) -----------------------------------------
def test_check_reports_write_limits_outside_plausibility(cigre):
    pm = loads_pointmap(
        one("low = -1.0\nhigh = 2.0\nplausible_min = 0.0\nplausible_max = 1.0"), source="pm.toml"
    )
    problems = check_pointmap(pm, cigre)
    assert any("low >= plausible_min (0), found -1" in p for p in problems), problems
    assert any("high <= plausible_max (1), found 2" in p for p in problems), problems
    assert all(p.startswith("pm.toml:2: point 'PV 3.p_mw'") for p in problems), problems


def test_check_reports_limits_on_a_to_field_point(cigre):
    text = one(
        "max_rate = 1.0", name="N2.vm_pu", bind="bus.vm_pu[1]", direction="to_field",
        kind="measurement",
    )  # fmt: skip
    (problem,) = check_pointmap(loads_pointmap(text), cigre)
    assert "max_rate: plausibility limits are checked on values read from the field" in problem


HARDWARE = """
pointmap = "pointmap.toml"

[[device]]
name = "rtu"
[device.modbus]
host = "127.0.0.1"
port = 1502
"""
SCENARIO = """
name = "plaus"
grid = "urban_district"
hardware = "hardware.toml"
mode = "mirror"
start = "12:00"
duration = "2s"
step = "1s"
"""


def _validate(tmp_path: Path, pointmap: str, capsys) -> tuple[int, str]:
    (tmp_path / "pointmap.toml").write_text(pointmap, encoding="utf-8")
    (tmp_path / "hardware.toml").write_text(HARDWARE, encoding="utf-8")
    (tmp_path / "sc.toml").write_text(SCENARIO, encoding="utf-8")
    rc = cli_main(["validate", str(tmp_path / "sc.toml")])
    cap = capsys.readouterr()
    return rc, cap.err + cap.out


def test_validate_reports_inconsistent_limits(tmp_path, capsys):
    point = one(
        "low = 0.8\nhigh = 1.3\nplausible_min = 0.9\nplausible_max = 1.2",
        name="N2.vm_pu", bind='bus.vm_pu["N2"]', kind="measurement",
    )  # fmt: skip
    rc, out = _validate(tmp_path, point, capsys)
    assert rc == 2, out
    assert "INVALID" in out and "point 'N2.vm_pu': low: the write limit" in out, out
    assert "expected high <= plausible_max (1.2), found 1.3" in out, out
    # min > max: the file is refused at load, naming its line
    rc, out = _validate(tmp_path, point.replace("plausible_min = 0.9", "plausible_min = 1.5"),
                        capsys)  # fmt: skip
    assert rc == 2 and "Traceback" not in out
    assert re.search(r"pointmap\.toml:\d+: point 'N2\.vm_pu': plausible_max: expected "
                     r"plausible_max >= plausible_min \(1\.5\), found 1\.2", out), out  # fmt: skip


# --- property tests on point-map files ---------------------------------------------------------
_VALUES = {
    "name": ['"A.p_mw"', '"B.p_mw"', '""', "3", '"A.p_mw"'],
    "bind": ["'sgen.p_mw[\"PV 3\"]'", "'bus.vm_pu[1]'", "'bus.vm_pu'", '"x"', "'line.i_ka[-1]'"],
    "direction": ['"to_twin"', '"to_field"', '"sideways"', "1"],
    "kind": ['"status"', '"measurement"', '"setpoint"', '"command"', '"alarm"'],
    "unit": ['"MW"', "0"],
    "low": ["0.0", "-1.0", '"a"', "inf"],
    "high": ["1.0", "-2.0", "nan"],
    "deadband": ["0.0", "-0.1", "0.01"],
    "tolerance": ["0.1", "-1"],
    "interval_s": ["1.0", "0", "-3"],
    "plausible_min": ["0.0", "-0.5", "2.0", "nan", '"x"', "true"],
    "plausible_max": ["1.0", "0.5", "-inf", "1e30"],
    "max_rate": ["0.1", "0", "-1", "inf", "[1]"],
    "bogus": ["1"],
}
_MODBUS = {
    "table": ['"input_register"', '"coil"', '"fifo"'],
    "address": ["0", "2", "-1", "70000", "1.5"],
    "type": ['"float32"', '"int16"', '"bool"', '"float128"'],
    "word_order": ['"big"', '"middle"'],
    "scale": ["1.0", "0", "nan"],
    "na": ["32767", '"n/a"'],
}

point_st = st.tuples(
    st.dictionaries(st.sampled_from(sorted(_VALUES)), st.integers(0, 5), max_size=10),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(sorted(_MODBUS)), st.integers(0, 4))),
)


def _render(points, garbage: int) -> str:
    out = ['substation = "SS1"']
    for keys, modbus in points:
        out.append("[[point]]")
        out += [f"{k} = {_VALUES[k][i % len(_VALUES[k])]}" for k, i in keys.items()]
        if modbus is not None:
            out.append("[point.modbus]")
            out += [f"{k} = {_MODBUS[k][i % len(_MODBUS[k])]}" for k, i in modbus.items()]
    if garbage == 1:
        out.insert(len(out) // 2, "this is = = not toml")
    elif garbage == 2:
        out.append("[point")
    return "\n".join(out) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(point_st, max_size=4), garbage=st.sampled_from([0, 0, 0, 1, 2]))
def test_any_point_map_file_loads_or_names_its_problems(cigre, points, garbage):
    text = _render(points, garbage)
    try:
        pm = loads_pointmap(text, source="map.toml")
    except PointMapError as exc:
        msgs = exc.problems or [str(exc)]
        for m in msgs:
            assert m.startswith("map.toml"), m
            assert "Traceback" not in m
        if exc.problems:  # each problem names a line of the file and a key or point
            assert all(re.match(r"map\.toml(:\d+)?: ", m) for m in msgs), msgs
        return
    # a loaded map: its limits are consistent, and checking it against a grid never raises
    for p in pm.points:
        if p.plausible_min is not None and p.plausible_max is not None:
            assert p.plausible_min <= p.plausible_max
        assert p.max_rate is None or p.max_rate > 0
    problems = check_pointmap(pm, cigre)
    assert all(m.startswith("map.toml") for m in problems), problems
    plausibilities(cigre, pm.points)  # defaults never raise either


@pytest.mark.parametrize(
    "grid", ["ieee14", "ieee118", "cigre_mv", "mv_oberrhein", "urban_district"]
)
def test_a_solved_bundled_grid_is_plausible_by_default(grid):
    """No default limit flags a legitimate value: every input of the generated maps (both
    modes), at the grid's own solved state, lies within its default range."""
    import warnings

    import pandapower as pp

    from grids.registry import load
    from twin.pointmap import resolve_element

    net = load(grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(net, lightsim2grid=False)
    bad, checked = [], 0
    for mode in ("hil", "mirror"):
        pm = generate_pointmap(net, mode=mode)
        inputs = [p for p in pm.points if p.direction == "to_twin"]
        for p, pl in zip(inputs, plausibilities(net, inputs)):
            i = resolve_element(net, p)
            v = None
            for tab in ("res_" + p.table, p.table):
                if tab in net and p.column in net[tab].columns and i in net[tab].index:
                    v = float(net[tab].at[i, p.column])
                    break
            if p.table in ("load", "sgen") and p.column in ("p_mw", "q_mvar"):
                v = float(net[p.table].at[i, p.column]) * float(net[p.table].at[i, "scaling"])
            if v is None or not math.isfinite(v):
                continue
            checked += 1
            if not (pl.low <= v <= pl.high) or (pl.binary and v not in (0.0, 1.0)):
                bad.append((mode, p.name, v, pl.low, pl.high))
    assert checked > 10 and bad == []
