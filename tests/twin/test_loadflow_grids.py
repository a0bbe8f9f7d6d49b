"""GridModel against pandapower.runpp on every bundled grid, both backends, after random changes."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pandapower as pp
import pandapower.topology as top
import pytest

import grids
from twin.loadflow import build_info, resolve_backend
from twin.model import _NATIVE, GridModel

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]
BIG = {"case1354pegase", "case2869pegase", "case9241pegase"}
V_TOL = 1e-6
ANGLE_TOL = 1e-4
FLOW_TOL = 1e-4
FLOW_COLUMNS = {
    "line": ("p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "i_ka", "loading_percent"),
    "trafo": ("p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar", "loading_percent"),
    "ext_grid": ("p_mw", "q_mvar"),
    "gen": ("p_mw", "q_mvar"),
}


def _reference(net) -> object:
    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False)
    return ref


def _assert_matches(sol, ref, where: str) -> None:
    vm_ref = ref.res_bus.vm_pu.to_numpy(float)
    va_ref = ref.res_bus.va_degree.to_numpy(float)
    assert np.array_equal(np.isnan(sol.vm_pu), np.isnan(vm_ref)), f"{where}: NaN buses differ"
    dv = np.nanmax(np.abs(sol.vm_pu - vm_ref))
    dva = np.abs(sol.va_degree - va_ref)
    dva = np.nanmax(np.minimum(dva, 360.0 - dva))  # the same angle may be reported as +-180
    assert dv <= V_TOL, f"{where}: max |dV| {dv:.3g} pu, expected <= {V_TOL}"
    assert dva <= ANGLE_TOL, f"{where}: max |d angle| {dva:.3g} deg, expected <= {ANGLE_TOL}"
    for table, columns in FLOW_COLUMNS.items():
        if len(ref[table]) == 0:
            continue
        for column in columns:
            got = sol.get(table, column)
            want = ref["res_" + table][column].to_numpy(float)
            assert got.shape == want.shape, f"{where}: {table}.{column} shape"
            assert np.array_equal(np.isnan(got), np.isnan(want)), f"{where}: {table}.{column} NaN"
            tol = FLOW_TOL if column.endswith(("_mw", "_mvar")) else 1e-4
            if column == "loading_percent":
                tol = 1e-3
            d = np.nanmax(np.abs(got - want)) if np.isfinite(want).any() else 0.0
            assert d <= tol, f"{where}: {table}.{column} differs by {d:.3g}, expected <= {tol}"


def _unsupplied(net) -> set:
    return set(top.unsupplied_buses(net))


def _random_topology_change(model: GridModel, rng: np.random.Generator) -> tuple[str, object]:
    """Toggle one line or line switch off while keeping every supplied bus supplied.

    Returns a description and an undo callable (None when nothing changed).
    """
    net = model.net
    base = _unsupplied(net)
    switches = (
        net.switch.index[(net.switch.et == "l") & net.switch.closed] if len(net.switch) else []
    )
    lines = net.line.index[net.line.in_service]
    for _ in range(10):  # bounded search for a change that keeps the grid connected
        if len(switches) and rng.random() < 0.5:
            sw = int(rng.choice(switches))
            net.switch.at[sw, "closed"] = False
            ok = _unsupplied(net) == base
            net.switch.at[sw, "closed"] = True
            if ok:
                model.update("switch", "closed", [False], index=[sw])
                return f"switch {sw} opened", lambda sw=sw: model.update(
                    "switch", "closed", [True], index=[sw]
                )
        elif len(lines):
            ln = int(rng.choice(lines))
            net.line.at[ln, "in_service"] = False
            ok = _unsupplied(net) == base
            net.line.at[ln, "in_service"] = True
            if ok:
                model.update("line", "in_service", [False], index=[ln])
                return f"line {ln} out", lambda ln=ln: model.update(
                    "line", "in_service", [True], index=[ln]
                )
    return "no safe toggle found", None


def _random_tap_change(model: GridModel, rng: np.random.Generator) -> str:
    trafo = model.net.trafo
    if len(trafo) == 0 or "tap_pos" not in trafo:
        return "no trafo"
    ok = trafo.index[trafo.tap_pos.notna() & trafo.tap_min.notna() & trafo.tap_max.notna()]
    if len(ok) == 0:
        return "no tap changer"
    t = int(rng.choice(ok))
    lo, hi = trafo.at[t, "tap_min"], trafo.at[t, "tap_max"]
    new = float(np.clip(trafo.at[t, "tap_pos"] + rng.choice([-1, 1]), lo, hi))
    model.update("trafo", "tap_pos", [new], index=[t])
    return f"trafo {t} tap {new}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", grids.names())
def test_loadflow_matches_pandapower_on_bundled_grid(name: str, backend: str) -> None:
    net = grids.load(name)
    ref = _reference(net)
    model = GridModel(net, backend=backend)
    sol = model.solve()
    assert sol.converged and sol.iterations >= 0
    assert sol.backend == resolve_backend(backend)  # GRIDTWIN_BACKEND may force one
    _assert_matches(sol, ref, f"{name}/{backend} base case")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", grids.names())
def test_loadflow_matches_pandapower_after_random_changes(name: str, backend: str) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    net = grids.load(name)
    model = GridModel(net, backend=backend)
    model.solve()
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()
    reps = 1 if name in BIG else 3
    for rep in range(reps):
        f = rng.uniform(0.7, 1.3, len(p0))
        model.update("load", "p_mw", p0 * f)
        model.update("load", "q_mvar", q0 * f)
        toggled, undo = _random_topology_change(model, rng)
        what = [toggled, _random_tap_change(model, rng)]
        try:
            ref = _reference(model.net)
        except pp.LoadflowNotConverged:
            # the outage pushed the grid past its limit (pandapower diverges too): take it back
            assert undo is not None, f"{name} rep {rep}: pandapower diverged after {what}"
            undo()
            what[0] += " (undone: pandapower diverged)"
            ref = _reference(model.net)
        sol = model.solve()
        _assert_matches(sol, ref, f"{name}/{backend} rep {rep}: {what}")


NATIVE_ABS_TOL = 1e-6  # MW, Mvar, kA, pu, degree, percent (relative above 1)


def _native_columns(sol, net) -> list[tuple[str, str]]:
    return [
        (table, column)
        for table, columns in _NATIVE.items()
        if len(net[table])
        for column in sorted(columns)
    ]


def _assert_all_native(sol, ref, where: str) -> None:
    """Every natively computed column (all of line, trafo, ext_grid, gen, load, sgen) equals
    ``net.res_*`` of an independent pandapower run."""
    cols = _native_columns(sol, ref)
    assert cols, where
    for table, column in cols:
        assert sol.native(table, column), f"{where}: {table}.{column} fell back to pandapower"
        got = sol.get(table, column)
        want = ref["res_" + table][column].to_numpy(float)
        assert got.shape == want.shape, f"{where}: {table}.{column} shape"
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{where}: {table}.{column} NaN"
        assert np.array_equal(np.isinf(got), np.isinf(want)), f"{where}: {table}.{column} inf"
        fin = np.isfinite(want)
        if fin.any():
            err = np.abs(got[fin] - want[fin]) / np.maximum(1.0, np.abs(want[fin]))
            k = int(np.argmax(err))
            assert err[k] <= NATIVE_ABS_TOL, (
                f"{where}: {table}.{column}[{ref[table].index[fin][k]}] = {got[fin][k]!r}, "
                f"expected {want[fin][k]!r}"
            )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", grids.names())
def test_all_native_results_match_pandapower_after_a_sequence_of_changes(
    name: str, backend: str
) -> None:
    """Injections, a line or switch toggle and a tap step per round; each round's solution is
    read only after the next round has changed and solved the model (its results come from the
    structure it was solved on), and again at the end (reading never changes them)."""
    rng = np.random.default_rng(zlib.crc32(b"native " + name.encode()))
    net = grids.load(name)
    model = GridModel(net, backend=backend)
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()
    s0 = net.sgen.p_mw.to_numpy(float).copy()
    rounds = 2 if name in BIG else 4
    kept = []
    for rep in range(rounds):
        f = rng.uniform(0.7, 1.3, len(p0))
        model.update("load", "p_mw", p0 * f)
        model.update("load", "q_mvar", q0 * f)
        if len(s0):
            model.update("sgen", "p_mw", s0 * rng.uniform(0.5, 1.0, len(s0)))
        what = [_random_topology_change(model, rng)[0], _random_tap_change(model, rng)]
        try:
            ref = _reference(model.net)
        except pp.LoadflowNotConverged:
            continue  # pandapower diverges too: nothing to compare this round
        sol = model.solve()
        if kept:
            prev, prev_ref, prev_what = kept[-1]
            _assert_all_native(prev, prev_ref, f"{name}/{backend} round {rep - 1}: {prev_what}")
        kept.append((sol, ref, what))
    assert kept, f"{name}: pandapower diverged in every round"
    for rep, (sol, ref, what) in enumerate(kept):
        _assert_all_native(sol, ref, f"{name}/{backend} round {rep} re-read: {what}")
