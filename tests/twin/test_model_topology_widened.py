"""The widened compile: branches out of service and element switches open at compile are patches.

``GridModel`` converts the net with every line and trafo in service and every line / trafo switch
closed, then applies the real state as patches. Closing a switch that was open at compile (a
ring's normally-open point) and bringing back a branch that was out at compile are then patches
too: no pandapower conversion (counted) and no new symbolic analysis. Every solve equals
``pandapower.runpp(copy, lightsim2grid=False)`` to 1e-8 (bus voltages and angles, line and trafo
flows and loading), both backends; ``to_net`` gives pandapower's own result tables.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandapower as pp
import pytest

import grids
import twin
from twin.loadflow import build_info
from twin.model import GridModel

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]
ATOL = 1e-8  # pu, degree, MW, Mvar, percent: both solve to a 1e-8 pu mismatch

_COLUMNS = {
    "line": ("p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "i_ka", "loading_percent",
             "vm_from_pu", "vm_to_pu", "va_to_degree"),
    "trafo": ("p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar", "loading_percent", "vm_lv_pu"),
}  # fmt: skip


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def _solved_copy(net):
    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pp.runpp(ref, lightsim2grid=False)
    return ref


def _close(got: np.ndarray, want: np.ndarray, what: str, unit: float = 1.0) -> None:
    """Equal to ATOL per ``unit`` (1e-8 pu: sn_mva for MW / Mvar, 100 for a loading in
    percent), relative above one unit."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{what}: inf")
    fin = np.isfinite(want)
    err = np.abs(got[fin] - want[fin]) / np.maximum(unit, np.abs(want[fin]))
    assert not err.size or err.max() <= ATOL, f"{what}: {err.max():.2e} at {np.argmax(err)}"


def _assert_like(sol, ref, where: str) -> None:
    _close(sol.vm_pu, ref.res_bus.vm_pu.to_numpy(), f"{where}: bus.vm_pu")
    _close(sol.va_degree, ref.res_bus.va_degree.to_numpy(), f"{where}: bus.va_degree")
    for table, columns in _COLUMNS.items():
        if not len(ref[table]):
            continue
        for column in columns:
            want = ref[f"res_{table}"][column].to_numpy(dtype=float)
            # per unit: MW / Mvar of sn_mva, a loading in percent of the rating
            unit = float(ref.sn_mva) if column.endswith(("_mw", "_mvar")) else 1.0
            unit = 100.0 if column == "loading_percent" else unit
            _close(sol.get(table, column), want, f"{where}: {table}.{column}", unit)
    cut = ref.bus.index[ref.res_bus.vm_pu.isna() & ref.bus.in_service].tolist()
    assert sorted(sol.unsupplied_buses.tolist()) == sorted(cut), where


def _assert_to_net_like(model: GridModel, ref, where: str) -> None:
    """``to_net`` (pandapower's own extraction) gives pandapower's result tables."""
    model.to_net()
    net = model.net
    for table in ("bus", "line", "trafo", "switch", "load", "sgen", "ext_grid"):
        if not len(ref[table]):
            continue
        for column in ref[f"res_{table}"].columns:
            want = ref[f"res_{table}"][column].to_numpy(dtype=float)
            got = net[f"res_{table}"][column].to_numpy(dtype=float)
            np.testing.assert_array_equal(
                np.isnan(got), np.isnan(want), err_msg=f"{where}: to_net {table}.{column} NaN"
            )
            np.testing.assert_allclose(
                got, want, atol=1e-6, rtol=0, equal_nan=True,
                err_msg=f"{where}: to_net {table}.{column}",
            )  # fmt: skip


def _count_conversions(model) -> list[int]:
    """Calls of pandapower's conversion and of the model's recompile, appended to one list."""
    calls: list[int] = []
    conv, recompile = model._pp["pd2ppc"], model._recompile
    model._pp["pd2ppc"] = lambda net: (calls.append(1), conv(net))[1]
    model._recompile = lambda: (calls.append(2), recompile())[1]
    return calls


Step = tuple[str, str, int, object]


def _run(net, steps: list[Step], backend: str, *, to_net: bool = True) -> GridModel:
    """Each step through ``update`` and on a reference copy; no conversion, no new analysis."""
    model = GridModel(copy.deepcopy(net), backend=backend)
    assert model._widened
    _assert_like(model.solve(), _solved_copy(net), "compiled")
    calls = _count_conversions(model)
    analyses = model.analyses
    for k, (table, column, idx, value) in enumerate(steps):
        model.update(table, column, [value], index=[idx])
        net[table].at[idx, column] = value
        _assert_like(model.solve(), _solved_copy(net), f"step {k}: {table}.{column}[{idx}]")
    assert calls == [], "a step ran pandapower's conversion"
    assert model.analyses == analyses
    if to_net:
        _assert_to_net_like(model, _solved_copy(net), "last step")
    return model


# --- the issue's own case: a ring's normally-open point closed ----------------------------------
def test_cigre_mv_open_ring_points_closed_are_patches(backend: str) -> None:
    net = grids.load("cigre_mv")  # switches 1, 2 and 4 are the open ring points
    steps: list[Step] = [
        ("switch", "closed", 1, True), ("switch", "closed", 2, True),
        ("switch", "closed", 4, True), ("switch", "closed", 1, False),
        ("switch", "closed", 2, False), ("switch", "closed", 4, False),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_cigre_mv_open_switch_0_then_close_switch_1_is_patched(backend: str) -> None:
    # the regression (the section re-energised through the other path), now patched
    net = grids.load("cigre_mv")
    model = _run(net, [("switch", "closed", 0, False), ("switch", "closed", 1, True)], backend)
    assert model.patches == 2


def test_cigre_mv_ring_closed_then_mixed_changes(backend: str) -> None:
    net = grids.load("cigre_mv")
    steps: list[Step] = [
        ("switch", "closed", 2, True),  # open at compile: a mesh now
        ("line", "in_service", 3, False),  # the mesh keeps it supplied
        ("switch", "closed", 4, True),
        ("line", "in_service", 10, False),  # buses 13, 14 fed through the closed ring point
        ("load", "p_mw", 3, 1.5),
        ("switch", "closed", 3, False),  # closed at compile: opened at one end
        ("line", "in_service", 3, True),
        ("line", "in_service", 10, True),
        ("switch", "closed", 2, False),
        ("switch", "closed", 3, True),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_mv_oberrhein_every_open_switch_closed_and_opened_again(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    net["_ppc"] = None
    opened = [int(k) for k in net.switch.index[~net.switch.closed]]
    closed = [int(k) for k in net.switch.index[net.switch.closed & (net.switch.et == "l")][:2]]
    steps: list[Step] = [("switch", "closed", k, True) for k in opened]
    steps += [("switch", "closed", closed[0], False), ("trafo", "tap_pos", 142, 1),
              ("line", "in_service", 23, False), ("switch", "closed", opened[0], False),
              ("line", "in_service", 23, True), ("switch", "closed", closed[0], True)]  # fmt: skip
    steps += [("switch", "closed", k, False) for k in opened[1:]]
    _run(net, steps, backend)


# --- branches out of service at compile --------------------------------------------------------
def test_ieee118_line_and_trafo_out_at_compile_come_back(backend: str) -> None:
    net = grids.load("ieee118")
    net.line.loc[[20, 40], "in_service"] = False
    net.trafo.at[3, "in_service"] = False
    steps: list[Step] = [
        ("line", "in_service", 20, True), ("trafo", "in_service", 3, True),
        ("line", "in_service", 55, False), ("line", "in_service", 40, True),
        ("line", "in_service", 20, False), ("line", "in_service", 55, True),
        ("line", "in_service", 7, False),  # cuts the generator at bus 9 off: recompiles
    ]  # fmt: skip
    model = _run(net, steps[:-1], backend)
    table, column, idx, value = steps[-1]
    model.update(table, column, [value], index=[idx])
    net[table].at[idx, column] = value
    _assert_like(model.solve(), _solved_copy(net), "line 7 out")


def test_ieee14_line_out_at_compile_comes_back_and_goes_again(backend: str) -> None:
    net = grids.load("ieee14")
    net.line.at[3, "in_service"] = False
    steps: list[Step] = [
        ("line", "in_service", 3, True), ("line", "in_service", 5, False),
        ("line", "in_service", 3, False), ("line", "in_service", 5, True),
        ("line", "in_service", 3, True),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_line_out_of_service_and_behind_an_open_switch_at_compile(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.line.at[12, "in_service"] = False  # line 12 also has the open switch 1 (bus 7)
    net.line.at[13, "in_service"] = False  # and line 13 the open switch 2 (bus 4)
    steps: list[Step] = [
        ("line", "in_service", 12, True),  # still open at bus 7: its charging from bus 6 only
        ("switch", "closed", 1, True),  # now a mesh
        ("switch", "closed", 2, True),  # line 13 still out: nothing changes but the record
        ("line", "in_service", 13, True),
        ("line", "in_service", 12, False),
        ("switch", "closed", 1, False),
        ("line", "in_service", 12, True),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_buses_cut_off_at_compile_are_fed_again_through_a_ring_point(backend: str) -> None:
    # line 10 out at compile: buses 13, 14 cut off (NaN) with the element switch on bus 14;
    # closing the ring point at bus 8 feeds them from the other feeder
    net = grids.load("cigre_mv")
    net.line.at[10, "in_service"] = False
    model = GridModel(copy.deepcopy(net), backend=backend)
    assert set(model.solve().unsupplied_buses.tolist()) == {13, 14}
    steps: list[Step] = [
        ("switch", "closed", 4, True), ("line", "in_service", 10, True),
        ("line", "in_service", 10, False), ("switch", "closed", 4, False),
        ("switch", "closed", 4, True), ("switch", "closed", 5, False),
        ("trafo", "in_service", 1, False), ("switch", "closed", 5, True),
        ("trafo", "in_service", 1, True),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_trafo_out_at_compile_with_its_feeder_cut_off_comes_back(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.trafo.at[1, "in_service"] = False  # buses 12-14 cut off, switch 5 on bus 14 with them
    model = GridModel(copy.deepcopy(net), backend=backend)
    assert set(model.solve().unsupplied_buses.tolist()) == {12, 13, 14}
    steps: list[Step] = [
        ("trafo", "in_service", 1, True), ("switch", "closed", 5, False),
        ("trafo", "in_service", 1, False), ("switch", "closed", 5, True),
        ("trafo", "in_service", 1, True),
    ]  # fmt: skip
    _run(net, steps, backend)


def test_tap_change_on_a_widened_compile_is_one_patch(backend: str) -> None:
    net = grids.load("mv_oberrhein")  # open switches: the compile's patch is re-installed
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    assert model.patches == 0  # the compile's own state is no patch
    for k, tap in enumerate((2, -1, 2)):
        model.update("trafo", "tap_pos", [tap], index=[114])
        net.trafo.at[114, "tap_pos"] = tap
        _assert_like(model.solve(), _solved_copy(net), f"tap {tap}")
        assert model.patches == k + 1


# --- what stays as pandapower handles it ---------------------------------------------------------
def test_generator_cut_off_at_compile_compiles_the_real_state(backend: str) -> None:
    # pandapower turns a cut-off generator off: the real state is converted as it is
    net = grids.load("ieee118")
    net.line.at[7, "in_service"] = False
    model = GridModel(copy.deepcopy(net), backend=backend)
    assert not model._widened
    _assert_like(model.solve(), _solved_copy(net), "compiled")
    model.update("line", "in_service", [True], index=[7])
    net.line.at[7, "in_service"] = True
    _assert_like(model.solve(), _solved_copy(net), "line 7 back")


def test_a_refused_patch_converts_the_real_state_once(backend: str) -> None:
    # ieee118 line 7 cuts the generator at bus 9 off: the patch is refused and the state is
    # converted once as it is (a widened conversion would be refused the same way)
    net = grids.load("ieee118")
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    calls = _count_conversions(model)
    model.update("line", "in_service", [False], index=[7])
    net.line.at[7, "in_service"] = False
    _assert_like(model.solve(), _solved_copy(net), "line 7 out")
    assert calls == [2, 1] and not model._widened
    model.update("line", "in_service", [True], index=[7])  # not in that compile: converts
    net.line.at[7, "in_service"] = True
    _assert_like(model.solve(), _solved_copy(net), "line 7 back")
    assert calls == [2, 1, 2, 1]


def test_out_of_service_bus_stays_as_pandapower_handles_it(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.bus.at[10, "in_service"] = False  # lines 7 and 8 end at an out-of-service bus
    steps: list[Step] = [("switch", "closed", 2, True), ("line", "in_service", 3, False),
                         ("line", "in_service", 3, True)]  # fmt: skip
    _run(net, steps, backend)


# --- no stale model -------------------------------------------------------------------------------
def test_direct_edits_behind_a_widened_model_are_seen(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.line.at[5, "in_service"] = False
    model = GridModel(net, backend=backend)
    model.solve()
    net.switch.at[1, "closed"] = True  # behind the model's back
    _assert_like(model.solve(), _solved_copy(net), "switch closed directly")
    net.line.at[5, "in_service"] = True
    _assert_like(model.solve(), _solved_copy(net), "line back directly")
    # the same value resent after the direct edit is no stale answer either
    model.update("switch", "closed", [True], index=[1])
    _assert_like(model.solve(), _solved_copy(net), "resent")


def test_widened_compile_leaves_the_net_as_given() -> None:
    net = grids.load("mv_oberrhein")
    net.line.at[23, "in_service"] = False
    before = {(t, c): net[t][c].copy() for t, c in (("switch", "closed"), ("line", "in_service"),
                                                    ("trafo", "in_service"))}  # fmt: skip
    model = GridModel(net)
    assert model._widened
    for (table, column), values in before.items():
        assert net[table][column].dtype == values.dtype
        np.testing.assert_array_equal(net[table][column].to_numpy(), values.to_numpy())
    assert not model._guard_stale()


def test_n_minus_1_on_a_widened_compile_equals_one_by_one_pandapower() -> None:
    # line 6 out and ring point 2 closed at compile; lines 12 and 14 open at one end: each
    # a candidate (its outage removes its charging)
    net = grids.load("cigre_mv")
    net.line.at[6, "in_service"] = False
    net.switch.at[2, "closed"] = True
    model = GridModel(copy.deepcopy(net), backend=BACKENDS[0])
    assert model._widened
    res = twin.n_minus_1(model, threads=1)
    expected = [("line", int(i)) for i in net.line.index[net.line.in_service]]
    expected += [("trafo", int(i)) for i in net.trafo.index[net.trafo.in_service]]
    assert res.element == expected
    for k, (table, index) in enumerate(res.element):
        ref = copy.deepcopy(net)
        ref[table].at[index, "in_service"] = False
        ref = _solved_copy(ref)
        vm = ref.res_bus.vm_pu.to_numpy()
        np.testing.assert_array_equal(np.isnan(res.vm_pu[k]), np.isnan(vm), err_msg=str(k))
        assert np.nanmax(np.abs(res.vm_pu[k] - vm)) < 1e-6, (table, index)
        loading = np.nan_to_num(
            np.concatenate([ref.res_line.loading_percent, ref.res_trafo.loading_percent])
        )
        np.testing.assert_allclose(res.loading_percent[k], loading, atol=1e-4, rtol=0)
