"""Solution result columns computed natively (no pandapower extraction) against pandapower.runpp.

Every natively computed column of line, trafo, ext_grid, gen, load and sgen is compared with
``net.res_*`` after ``pandapower.runpp(net, lightsim2grid=False)``, on bundled grids as they come
and after edits that exercise the corner cases: out-of-service elements, an isolated bus carrying
a load, an sgen and a gen, an out-of-service bus, scaled loads and sgens, two gens sharing a bus
(reactive split by Q range), a PV gen on the slack bus, two ext_grids on one bus (slack weights)
and a slack gen.
"""

from __future__ import annotations

import copy

import numpy as np
import pandapower as pp
import pytest

import grids
from twin.loadflow import build_info
from twin.model import _NATIVE, GridModel
from twin.pointmap import generate_pointmap

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]
GRIDS = ["urban_district", "cigre_mv", "ieee118", "mv_oberrhein", "ieee14", "cigre_lv"]
ABS_TOL = 1e-6  # MW, Mvar, kA, pu, degree, percent: both solve to 1e-8 pu mismatch


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def _reference(net, *, no_dc_init: bool = False):
    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False)
    if no_dc_init:
        # again from the solved voltages: no DC run leaves its P in the gen table (see below)
        pp.runpp(ref, lightsim2grid=False, init="results")
    return ref


def _own_extraction(model: GridModel):
    """The model's own pandapower path (``to_net``), on a copy of its results."""
    model.to_net()
    return copy.deepcopy(model.net)


def _assert_native_matches(sol, ref, where: str) -> None:
    checked = 0
    for table, columns in _NATIVE.items():
        if len(ref[table]) == 0:
            continue
        for column in sorted(columns):
            assert sol.native(table, column), f"{where}: {table}.{column} fell back to pandapower"
            got = sol.get(table, column)
            want = ref["res_" + table][column].to_numpy(float)
            assert got.shape == want.shape, f"{where}: {table}.{column} shape"
            assert np.array_equal(np.isnan(got), np.isnan(want)), (
                f"{where}: {table}.{column}: NaN at {np.flatnonzero(np.isnan(got))}, "
                f"expected at {np.flatnonzero(np.isnan(want))}"
            )
            assert np.array_equal(np.isinf(got), np.isinf(want)), f"{where}: {table}.{column} inf"
            fin = np.isfinite(want)
            if fin.any():
                err = np.abs(got[fin] - want[fin]) / np.maximum(1.0, np.abs(want[fin]))
                worst = int(np.argmax(err))
                assert err[worst] <= ABS_TOL, (
                    f"{where}: {table}.{column}[{ref[table].index[fin][worst]}] = "
                    f"{got[fin][worst]!r}, expected {want[fin][worst]!r}"
                )
            checked += 1
    assert checked


def _edit(net) -> None:
    """Corner cases pandapower has conventions for (see the module docstring)."""
    vn = float(net.bus.vn_kv.iloc[0])
    anchor = int(net.bus.index[0])
    # an isolated bus: its only line is out of service
    iso = pp.create_bus(net, vn_kv=vn, name="isolated")
    pp.create_line_from_parameters(
        net, anchor, iso, 1.0, 0.1, 0.1, 10.0, 0.4, in_service=False, name="iso_line"
    )
    pp.create_load(net, iso, p_mw=0.5, q_mvar=0.1, name="iso_load")
    pp.create_sgen(net, iso, p_mw=0.2, q_mvar=0.05, name="iso_sgen")
    pp.create_gen(net, iso, p_mw=0.3, vm_pu=1.0, name="iso_gen")
    # an out-of-service bus with a load on it
    dead = pp.create_bus(net, vn_kv=vn, in_service=False, name="dead")
    pp.create_load(net, dead, p_mw=0.4, q_mvar=0.1, name="dead_load")
    # out-of-service elements and scalings
    if len(net.load) > 3:
        net.load.at[net.load.index[1], "in_service"] = False
        net.load.loc[net.load.index[::2], "scaling"] = 0.8
    if len(net.sgen) > 2:
        net.sgen.at[net.sgen.index[0], "in_service"] = False
        net.sgen.loc[net.sgen.index[1::2], "scaling"] = 1.2
    else:
        pp.create_sgen(net, int(net.bus.index[1]), p_mw=0.1, q_mvar=-0.02, scaling=0.5)
    eg = net.ext_grid.index[0]
    slack_bus = int(net.ext_grid.at[eg, "bus"])
    vset = float(net.ext_grid.at[eg, "vm_pu"])
    # a PV gen on the slack bus (pypower subtracts it from the slack's P)
    pp.create_gen(net, slack_bus, p_mw=0.05, vm_pu=vset, min_q_mvar=-1.0, max_q_mvar=1.0)
    # a second ext_grid on the same bus: the bus's slack P is split by slack weights
    pp.create_ext_grid(
        net, slack_bus, vm_pu=vset, va_degree=float(net.ext_grid.at[eg, "va_degree"]),
        slack_weight=3.0, name="second_slack",
    )  # fmt: skip
    net.ext_grid.at[eg, "slack_weight"] = 1.0
    if len(net.gen) > 3:  # transmission grids: more gen cases
        g0, g1 = net.gen.index[0], net.gen.index[1]
        net.gen.at[g1, "in_service"] = False
        # a second gen on g0's bus with another Q range: Q splits by range
        b0 = int(net.gen.at[g0, "bus"])
        net.gen.at[g0, "min_q_mvar"], net.gen.at[g0, "max_q_mvar"] = -50.0, 100.0
        pp.create_gen(
            net, b0, p_mw=10.0, vm_pu=float(net.gen.at[g0, "vm_pu"]), min_q_mvar=-10.0,
            max_q_mvar=20.0,
        )  # fmt: skip
        # a slack gen: a second reference bus
        g2 = net.gen.index[2]
        net.gen.at[g2, "slack"] = True


@pytest.mark.parametrize("name", GRIDS)
def test_native_results_match_pandapower_on_bundled_grid(name: str, backend: str) -> None:
    net = grids.load(name)
    ref = _reference(net)
    sol = GridModel(net, backend=backend).solve()
    _assert_native_matches(sol, ref, f"{name}/{backend}")


@pytest.mark.parametrize("name", GRIDS)
def test_native_results_match_pandapower_with_outages_islands_and_slacks(
    name: str, backend: str
) -> None:
    net = grids.load(name)
    _edit(net)
    # With two ext_grids on one bus, runpp's slack split starts from the P its DC initialisation
    # left in the gen table (init="dc" and init="flat" give different splits); the model, its
    # to_net() and these native columns start from the P set points, like a run without DC init.
    ref = _reference(net, no_dc_init=True)
    model = GridModel(net, backend=backend)
    sol = model.solve()
    _assert_native_matches(sol, ref, f"{name}/{backend} edited")
    _assert_native_matches(sol, _own_extraction(model), f"{name}/{backend} edited, to_net")
    # after injection updates, and after a topology change
    rng = np.random.default_rng(7)
    f = rng.uniform(0.8, 1.2, len(net.load))
    model.update("load", "p_mw", net.load.p_mw.to_numpy(float) * f)
    model.update("sgen", "p_mw", net.sgen.p_mw.to_numpy(float) * 0.9)
    line = net.line.index[net.line.in_service & (net.line.name != "iso_line")][-1]
    model.update("line", "in_service", [False], index=[line])
    sol = model.solve()
    _assert_native_matches(sol, _reference(model.net, no_dc_init=True), f"{name}/{backend} updated")


def test_native_results_keep_the_inputs_they_were_solved_with(backend: str) -> None:
    net = grids.load("cigre_mv")
    model = GridModel(net, backend=backend)
    sol = model.solve()
    before = {t: sol.get(t, "p_mw") for t in ("load", "sgen", "ext_grid")}
    model.update("load", "p_mw", net.load.p_mw.to_numpy(float) * 1.1)
    model.update("sgen", "p_mw", [0.0], index=[net.sgen.index[0]])
    model.solve()
    for table, arr in before.items():
        np.testing.assert_array_equal(sol.get(table, "p_mw"), arr, err_msg=table)


def test_point_map_columns_need_no_pandapower_extraction(backend: str) -> None:
    net = grids.load("ieee118")
    pm = generate_pointmap(net, mode="hil")
    model = GridModel(net, backend=backend)

    def refuse(*args, **kwargs):
        raise AssertionError("pandapower's result extraction was used")

    model._pp["extract"] = refuse
    sol = model.solve()
    cols = {(p.table, p.column) for p in pm.points if p.kind == "measurement"}
    cols = {(t, c) for t, c in cols if c in _NATIVE.get(t, ()) or t == "bus"}
    assert {("line", "loading_percent"), ("gen", "q_mvar"), ("load", "p_mw")} <= cols
    for table, column in sorted(cols):
        assert sol.native(table, column), f"{table}.{column}"
        assert np.isfinite(sol.get(table, column)).all(), f"{table}.{column}"


def test_native_falls_back_for_voltage_dependent_loads(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.load["const_z_p_percent"] = 0.0
    net.load.at[net.load.index[0], "const_z_p_percent"] = 50.0
    sol = GridModel(net, backend=backend).solve()
    assert not sol.native("load", "p_mw")
    assert sol.native("sgen", "p_mw") and sol.native("line", "i_ka")
    assert sol.get("load", "p_mw").shape == (len(net.load),)


def test_q_limited_solution_keeps_load_and_sgen_native_and_matches_pandapower(
    backend: str,
) -> None:
    """Q limits bind on ieee118: gens and flows go through pandapower's extraction (fixed Q of
    the limited gens), load / sgen stay native; every column still equals runpp's."""
    net = grids.load("ieee118")
    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False, enforce_q_lims=True)
    model = GridModel(net, backend=backend, enforce_q_lims=True)
    sol = model.solve()
    assert sol.native("load", "p_mw") and sol.native("load", "q_mvar")
    assert not sol.native("gen", "q_mvar") and not sol.native("line", "p_from_mw")
    checked = (("load", "p_mw"), ("load", "q_mvar"), ("gen", "q_mvar"), ("ext_grid", "p_mw"),
               ("line", "p_from_mw"), ("trafo", "q_lv_mvar"))  # fmt: skip
    for table, column in checked:
        np.testing.assert_allclose(
            sol.get(table, column), ref["res_" + table][column].to_numpy(float), atol=1e-4,
            err_msg=f"{table}.{column}",
        )  # fmt: skip
    # a solution without binding limits on the same model keeps every table native again
    model2 = GridModel(grids.load("ieee118"), backend=backend)
    assert model2.solve().native("gen", "q_mvar")


def test_bus_voltages_alone_compute_no_flows(backend: str) -> None:
    model = GridModel(grids.load("cigre_mv"), backend=backend)
    calls = []
    native = model._native_results

    def counting(snap):
        calls.append(1)
        return native(snap)

    model._native_results = counting  # type: ignore[method-assign]
    sol = model.solve()
    assert sol.get("bus", "vm_pu").shape == sol.vm_pu.shape
    assert not calls, "reading bus voltages ran the result kernel"
    sol.get("line", "p_from_mw")
    sol.get("load", "p_mw")
    sol.get("ext_grid", "q_mvar")
    assert len(calls) == 1, "every native table comes from one kernel call"
