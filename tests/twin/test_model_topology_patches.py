"""Tap and element-switch changes patched onto the compiled model: named regressions.

Each case checks that the change took the patch path (``model.patches`` counts, no new symbolic
analysis) and that the solution equals ``pandapower.runpp`` on an independent copy of the net.
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


def _assert_like(sol, ref, atol: float = 1e-6) -> None:
    expect = ref.res_bus.vm_pu.to_numpy()
    np.testing.assert_array_equal(np.isnan(sol.vm_pu), np.isnan(expect))
    assert np.nanmax(np.abs(sol.vm_pu - expect)) < atol
    for table, columns in (
        ("line", ("p_from_mw", "q_from_mvar", "p_to_mw", "loading_percent", "vm_to_pu")),
        ("trafo", ("p_hv_mw", "q_lv_mvar", "loading_percent")),
        ("ext_grid", ("p_mw", "q_mvar")),
    ):
        for column in columns:
            got = sol.get(table, column)
            want = ref[f"res_{table}"][column].to_numpy(dtype=float)
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{table}.{column}")


def test_tap_change_is_patched_and_matches_pandapower(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    model = GridModel(copy.deepcopy(net), backend=backend)
    before = model.solve()
    before_p = before.get("trafo", "p_hv_mw")
    analyses = model.analyses
    for k, tap in enumerate((3, -4, 0)):
        model.update("trafo", "tap_pos", [tap], index=[142])
        net.trafo.at[142, "tap_pos"] = tap
        _assert_like(model.solve(), _solved_copy(net))
        assert model.patches == k + 1
    assert model.analyses == analyses
    # an earlier solution keeps the admittances it was solved with
    np.testing.assert_array_equal(before.get("trafo", "p_hv_mw"), before_p)


def test_tap_change_of_both_trafos_in_one_update(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    model.update("trafo", "tap_pos", [2, -3], index=[114, 142])
    net.trafo.loc[[114, 142], "tap_pos"] = [2, -3]
    _assert_like(model.solve(), _solved_copy(net))
    assert model.patches == 1


def test_switch_states_are_read_as_compiled_before_the_write(backend: str) -> None:
    # regression: closing a switch that was open at compile must not be taken for a patch of an
    # element compiled with both ends closed (it answered for the old topology, 2e-3 pu off)
    net = grids.load("cigre_mv")
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    model.update("switch", "closed", [True], index=[2])
    net.switch.at[2, "closed"] = True
    _assert_like(model.solve(), _solved_copy(net))


def test_line_switch_opened_at_one_end_is_patched(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.switch.at[2, "closed"] = True  # a mesh: opening switch 3 then islands nothing
    model = GridModel(copy.deepcopy(net), backend=backend)
    base = model.solve().vm_pu.copy()
    analyses = model.analyses
    model.update("switch", "closed", [False], index=[3])
    net.switch.at[3, "closed"] = False
    sol = model.solve()
    assert model.patches == 1 and model.analyses == analyses
    # the open end reports pandapower's auxiliary bus voltage, the line its charging only
    _assert_like(sol, _solved_copy(net))
    model.update("switch", "closed", [True], index=[3])
    net.switch.at[3, "closed"] = True
    sol = model.solve()
    assert model.patches == 2
    np.testing.assert_allclose(sol.vm_pu, base, atol=1e-9)
    _assert_like(sol, _solved_copy(net))


def test_line_switch_and_outage_of_the_same_line(backend: str) -> None:
    net = grids.load("cigre_mv")
    net.switch.at[2, "closed"] = True
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    line = int(net.switch.at[3, "element"])
    steps = [("switch", "closed", 3, False), ("line", "in_service", line, False),
             ("switch", "closed", 3, True), ("line", "in_service", line, True)]  # fmt: skip
    for table, column, idx, value in steps:
        model.update(table, column, [value], index=[idx])
        net[table].at[idx, column] = value
        _assert_like(model.solve(), _solved_copy(net))


def test_n_minus_1_after_a_tap_patch_equals_a_fresh_model() -> None:
    net = grids.load("mv_oberrhein")
    model = GridModel(copy.deepcopy(net))
    model.solve()
    elements = [("trafo", 114), ("trafo", 142)]
    twin.n_minus_1(model, elements)  # fills the set-up cache of the first compile
    model.update("trafo", "tap_pos", [4], index=[142])
    got = twin.n_minus_1(model, elements)
    net.trafo.at[142, "tap_pos"] = 4
    fresh = GridModel(copy.deepcopy(net))
    fresh.solve()
    want = twin.n_minus_1(fresh, elements)
    np.testing.assert_array_equal(got.converged, want.converged)
    np.testing.assert_allclose(got.vm_pu, want.vm_pu, atol=1e-8, equal_nan=True)


def test_tap_patch_keeps_a_half_open_line_patch(backend: str) -> None:
    # regression: a tap patch after a switch patch reinstalled the Ybus without the open end
    net = grids.load("cigre_mv")
    net.switch.at[2, "closed"] = True
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    model.update("switch", "closed", [False], index=[3])
    net.switch.at[3, "closed"] = False
    model.update("trafo", "tap_pos", [1], index=[0])
    net.trafo.at[0, "tap_pos"] = 1
    assert model.patches >= 2 and model.analyses == 1  # both patched, no recompile
    _assert_like(model.solve(), _solved_copy(net))


@pytest.mark.parametrize(("name", "line"), [("cigre_mv", 13), ("mv_oberrhein", 23)])
def test_outage_of_a_line_with_an_open_switch_is_patched(name: str, line: int, backend) -> None:
    # the line's auxiliary bus (its open switch end) loses supply: solved as a dead bus, NaN at
    # that end like pandapower, instead of a full conversion per toggle (radial grids, storms)
    net = grids.load(name)
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    for k, value in enumerate((False, True)):
        model.update("line", "in_service", [value], index=[line])
        net.line.at[line, "in_service"] = value
        sol = model.solve()
        assert model.patches == k + 1 and model.analyses == 1
        _assert_like(sol, _solved_copy(net))
        ref = _solved_copy(net)
        for column in ("loading_percent", "vm_to_pu", "vm_from_pu", "i_ka"):
            np.testing.assert_allclose(
                sol.get("line", column), ref.res_line[column].to_numpy(dtype=float),
                atol=1e-5, rtol=0, equal_nan=True, err_msg=column,
            )  # fmt: skip


def test_tap_changes_unread_in_between_give_the_flows_of_the_last_taps(backend: str) -> None:
    # Yf / Yt of a tap patch are built when results are first read: several patches in a row
    # (nothing read between) must answer with every tap as set, earlier solutions with theirs
    net = grids.load("mv_oberrhein")
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    model.update("trafo", "tap_pos", [2], index=[114])
    net.trafo.at[114, "tap_pos"] = 2
    first = model.solve()
    first_ref = _solved_copy(net)
    for idx, tap in ((142, 4), (114, -1), (142, 1)):  # 142 is compiled at -3
        model.update("trafo", "tap_pos", [tap], index=[idx])
        net.trafo.at[idx, "tap_pos"] = tap
        model.solve()
    last = model.solve()
    ref = _solved_copy(net)
    _assert_like(last, ref)
    np.testing.assert_allclose(last.get("bus", "p_mw"), ref.res_bus.p_mw.to_numpy(), atol=1e-5)
    _assert_like(first, first_ref)
    assert model.patches == 4


# --- bus-bus switches and cut-off outages: patched, no pandapower conversion -----------------
def _split_ieee14():
    """ieee14 with two bus couplers: bus 4 and PV bus 2 each split in two by a bus-bus switch."""
    net = grids.load("ieee14")
    for bus, moved, load in ((3, 2, True), (1, 1, False)):
        new = pp.create_bus(net, vn_kv=net.bus.at[bus, "vn_kv"], name=f"split {bus}")
        lines = net.line.index[(net.line.from_bus == bus) | (net.line.to_bus == bus)][:moved]
        for line in lines:
            for end in ("from_bus", "to_bus"):
                if net.line.at[line, end] == bus:
                    net.line.at[line, end] = new
        if load:
            pp.create_load(net, new, p_mw=5.0, q_mvar=2.0)
        pp.create_switch(net, bus, new, et="b", closed=True)
    return net


def _count_conversions(model) -> list[int]:
    """Calls of pandapower's conversion and of the model's recompile, appended to one list."""
    calls: list[int] = []
    conv, recompile = model._pp["pd2ppc"], model._recompile
    model._pp["pd2ppc"] = lambda net: (calls.append(1), conv(net))[1]
    model._recompile = lambda: (calls.append(2), recompile())[1]
    return calls


def _assert_all_like(sol, ref) -> None:
    """Every bus, line, trafo, load and ext_grid / gen result column like pandapower's."""
    _assert_like(sol, ref)
    for table, columns in (
        ("bus", ("va_degree", "p_mw", "q_mvar")),
        ("line", ("i_ka", "q_to_mvar", "vm_from_pu", "va_to_degree")),
        ("load", ("p_mw", "q_mvar")),
        ("gen", ("p_mw", "q_mvar", "vm_pu")),
        ("switch", ("i_ka",)),
    ):
        if not len(ref[table]):
            continue
        for column in columns:
            np.testing.assert_allclose(
                sol.get(table, column), ref[f"res_{table}"][column].to_numpy(dtype=float),
                atol=1e-4, rtol=0, equal_nan=True, err_msg=f"{table}.{column}",
            )  # fmt: skip


def test_bus_bus_switch_toggles_patch_and_match_pandapower(backend: str) -> None:
    net = _split_ieee14()
    model = GridModel(copy.deepcopy(net), backend=backend)
    _assert_all_like(model.solve(), _solved_copy(net))
    calls = _count_conversions(model)
    steps = [(0, False), (1, False), (0, True), (1, True), (1, False), (0, False)]
    for k, (sw, closed) in enumerate(steps):
        model.update("switch", "closed", [closed], index=[sw])
        net.switch.at[sw, "closed"] = closed
        sol = model.solve()
        ref = _solved_copy(net)
        _assert_all_like(sol, ref)
        # the buses of a closed switch are one bus: the same voltage, as pandapower reports
        for s in net.switch.index[net.switch.closed]:
            a, b = net.switch.at[s, "bus"], net.switch.at[s, "element"]
            pa, pb = net.bus.index.get_loc(a), net.bus.index.get_loc(b)
            assert sol.vm_pu[pa] == sol.vm_pu[pb] and sol.va_degree[pa] == sol.va_degree[pb]
        assert model.patches == k + 1
    assert calls == [] and model.analyses == 1


def test_bus_bus_switch_open_at_compile_then_closed(backend: str) -> None:
    net = _split_ieee14()
    net.switch.at[0, "closed"] = False
    model = GridModel(copy.deepcopy(net), backend=backend)
    _assert_all_like(model.solve(), _solved_copy(net))
    calls = _count_conversions(model)
    model.update("switch", "closed", [True], index=[0])
    net.switch.at[0, "closed"] = True
    _assert_all_like(model.solve(), _solved_copy(net))
    assert calls == []


def test_n_minus_1_on_fused_buses_equals_a_fresh_model() -> None:
    net = _split_ieee14()
    model = GridModel(copy.deepcopy(net))
    model.solve()
    model.update("switch", "closed", [False], index=[1])
    net.switch.at[1, "closed"] = False
    elements = [("line", int(i)) for i in net.line.index[:8]]
    got = twin.n_minus_1(model, elements)
    fresh = GridModel(copy.deepcopy(net))
    fresh.solve()
    want = twin.n_minus_1(fresh, elements)
    np.testing.assert_array_equal(got.converged, want.converged)
    np.testing.assert_allclose(got.vm_pu, want.vm_pu, atol=1e-8, equal_nan=True)


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        # cigre_lv: each bus-bus switch feeds a whole feeder (radial): opening cuts it off
        ("cigre_lv", [("switch", 0, False), ("switch", 1, False), ("switch", 0, True),
                      ("switch", 1, True)]),
        # cigre_mv: radial line and trafo outages cut load buses off, then return
        ("cigre_mv", [("line", 1, False), ("line", 10, False), ("line", 1, True),
                      ("trafo", 1, False), ("line", 10, True), ("trafo", 1, True)]),
    ],
)  # fmt: skip
def test_cut_off_changes_patch_and_report_the_buses(name, steps, backend: str) -> None:
    net = grids.load(name)
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    calls = _count_conversions(model)
    for table, idx, value in steps:
        column = "closed" if table == "switch" else "in_service"
        model.update(table, column, [value], index=[idx])
        net[table].at[idx, column] = value
        sol = model.solve()
        ref = _solved_copy(net)
        _assert_all_like(sol, ref)
        cut = set(net.bus.index[ref.res_bus.vm_pu.isna() & net.bus.in_service].tolist())
        assert set(sol.unsupplied_buses.tolist()) == cut
    assert calls == [] and model.analyses == 1


def test_tap_stepped_up_and_down_again_matches_pandapower(backend: str) -> None:
    # a tap vector seen before is restored from the compile's memo: same answers as pandapower
    net = grids.load("mv_oberrhein")
    model = GridModel(copy.deepcopy(net), backend=backend)
    model.solve()
    calls = _count_conversions(model)
    for tap in (1, 0, 1, 0, 2, 1):
        model.update("trafo", "tap_pos", [tap], index=[142])
        net.trafo.at[142, "tap_pos"] = tap
        _assert_like(model.solve(), _solved_copy(net))
    assert calls == [] and model.analyses == 1
