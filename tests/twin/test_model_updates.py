"""GridModel inputs, errors, state handling and result writing (both backends)."""

from __future__ import annotations

import copy

import numpy as np
import pandapower as pp
import pytest

import grids
from twin.errors import InvalidInput, LoadflowError, LoadflowNotConverged
from twin.loadflow import build_info, resolve_backend
from twin.model import UPDATABLE, GridModel

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]


def _runpp(net, **kwargs):
    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False, **kwargs)
    return ref


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def test_model_nan_input_raises_and_changes_nothing(backend: str) -> None:
    net = grids.load("ieee14")
    model = GridModel(net, backend=backend)
    before = model.solve().vm_pu
    p_before = net.load.p_mw.to_numpy().copy()
    values = net.load.p_mw.to_numpy() * 1.1
    values[2] = np.nan
    with pytest.raises(InvalidInput) as info:
        model.update("load", "p_mw", values)
    err = info.value
    assert err.table == "load" and err.column == "p_mw"
    assert err.element == net.load.index[2]
    assert "load.p_mw" in str(err) and "finite" in str(err)
    np.testing.assert_array_equal(net.load.p_mw.to_numpy(), p_before)
    after = model.solve()
    np.testing.assert_allclose(after.vm_pu, before, atol=1e-12)
    with pytest.raises(InvalidInput):
        model.update("sgen", "p_mw", [np.inf], index=[0]) if len(net.sgen) else model.update(
            "gen", "p_mw", [np.inf], index=[net.gen.index[0]]
        )


def test_model_unknown_table_column_element_list_allowed(backend: str) -> None:
    model = GridModel(grids.load("ieee9"), backend=backend)
    with pytest.raises(InvalidInput) as info:
        model.update("bus", "vn_kv", [1.0], index=[0])
    assert "load.p_mw" in str(info.value)  # the allowed inputs are listed
    with pytest.raises(InvalidInput) as info:
        model.update("load", "p_mw", [1.0], index=[999])
    assert info.value.element == 999
    with pytest.raises(InvalidInput):
        model.update("load", "p_mw", [1.0, 2.0], index=[0])
    with pytest.raises(InvalidInput):
        model.update("switch", "closed", [0.5], index=[0]) if len(model.net.switch) else (
            model.update("line", "in_service", [2], index=[0])
        )
    assert ("trafo", "tap_pos") in UPDATABLE


def test_model_read_only_inputs_accepted_and_not_mutated(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    model = GridModel(net, backend=backend)
    values = net.load.p_mw.to_numpy(float) * 0.9
    values.setflags(write=False)
    keep = values.copy()
    idx = np.asarray(net.load.index)
    idx.setflags(write=False)
    model.update("load", "p_mw", values, index=idx)
    np.testing.assert_array_equal(values, keep)
    np.testing.assert_array_equal(net.load.p_mw.to_numpy(), keep)
    sol = model.solve()
    ref = _runpp(net)
    assert np.nanmax(np.abs(sol.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6


def test_model_update_each_input_kind_matches_pandapower(backend: str) -> None:
    net = grids.load("cigre_mv")
    model = GridModel(net, backend=backend)
    model.solve()
    model.update("sgen", "p_mw", net.sgen.p_mw.to_numpy() * 1.5)
    model.update("sgen", "q_mvar", np.full(len(net.sgen), 0.01))
    model.update("ext_grid", "vm_pu", [1.02], index=[net.ext_grid.index[0]])
    closed = net.switch.index[net.switch.closed & (net.switch.et == "l")]
    model.update("switch", "closed", [True], index=[net.switch.index[~net.switch.closed][0]])
    model.update("switch", "closed", [False], index=[closed[0]])
    model.update("trafo", "tap_pos", [1], index=[net.trafo.index[0]])
    sol = model.solve()
    ref = _runpp(net)
    assert np.nanmax(np.abs(sol.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6
    np.testing.assert_allclose(
        sol.line_p_from_mw, ref.res_line.p_from_mw.to_numpy(), atol=1e-4, equal_nan=True
    )
    assert model.value("ext_grid", "vm_pu", net.ext_grid.index[0]) == 1.02

    net2 = grids.load("ieee30")
    m2 = GridModel(net2, backend=backend)
    g = net2.gen.index[0]
    m2.update("gen", "p_mw", [net2.gen.at[g, "p_mw"] * 1.2], index=[g])
    m2.update("gen", "vm_pu", [1.03], index=[g])
    sol2 = m2.solve()
    ref2 = _runpp(net2)
    assert np.nanmax(np.abs(sol2.vm_pu - ref2.res_bus.vm_pu.to_numpy())) < 1e-6
    np.testing.assert_allclose(sol2.gen_q_mvar, ref2.res_gen.q_mvar.to_numpy(), atol=1e-4)


def test_model_tap_change_and_outage_keep_symbolic_analysis(backend: str) -> None:
    net = grids.load("ieee118")
    model = GridModel(net, backend=backend)
    model.solve()
    assert model.analyses == 1
    t = net.trafo.index[0]
    model.update("trafo", "tap_pos", [net.trafo.at[t, "tap_pos"] + 1], index=[t])
    model.update("line", "in_service", [False], index=[net.line.index[5]])
    sol = model.solve()
    assert model.analyses == 1  # same or smaller pattern: the symbolic analysis was kept
    ref = _runpp(net)
    assert np.nanmax(np.abs(sol.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6
    model.update("line", "in_service", [True], index=[net.line.index[5]])
    sol = model.solve()
    ref = _runpp(net)
    assert np.nanmax(np.abs(sol.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6


def test_model_not_converged_then_recovers(backend: str) -> None:
    net = grids.load("ieee14")
    model = GridModel(net, backend=backend)
    good = model.solve()
    p0 = net.load.p_mw.to_numpy().copy()
    model.update("load", "p_mw", p0 * 40.0)
    with pytest.raises(LoadflowNotConverged) as info:
        model.solve()
    err = info.value
    assert err.iterations > 0
    assert err.worst_bus in set(net.bus.index)
    assert err.mismatch > 1e-8
    model.update("load", "p_mw", p0)
    again = model.solve()
    assert again.converged
    np.testing.assert_allclose(again.vm_pu, good.vm_pu, atol=1e-9)


def test_model_to_net_writes_results_only_when_asked(backend: str) -> None:
    net = grids.load("ieee30")
    model = GridModel(net, backend=backend)
    sol = model.solve()
    assert len(net.res_bus) == 0 or net.res_bus.vm_pu.isna().all()
    _ = sol.line_loading_percent  # derived results must not leak into net.res_*
    assert len(net.res_line) == 0 or net.res_line.p_from_mw.isna().all()
    model.to_net()
    ref = _runpp(net)
    np.testing.assert_allclose(net.res_bus.vm_pu, ref.res_bus.vm_pu, atol=1e-9)
    np.testing.assert_allclose(
        net.res_line.loading_percent, ref.res_line.loading_percent, atol=1e-6
    )
    np.testing.assert_allclose(sol.get("line", "loading_percent"), ref.res_line.loading_percent,
                               atol=1e-6)  # fmt: skip
    with pytest.raises(InvalidInput):
        sol.get("line", "no_such_column")


def test_model_enforce_q_lims_like_pandapower(backend: str) -> None:
    net = grids.load("ieee118")
    model = GridModel(net, backend=backend, enforce_q_lims=True)
    sol = model.solve()
    ref = _runpp(net, enforce_q_lims=True)
    free = _runpp(net)
    # the limits bind on this grid, so this comparison tests the PV -> PQ loop
    assert np.nanmax(np.abs(free.res_bus.vm_pu - ref.res_bus.vm_pu)) > 1e-3
    assert np.nanmax(np.abs(sol.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6
    np.testing.assert_allclose(sol.gen_q_mvar, ref.res_gen.q_mvar.to_numpy(), atol=1e-4)


def test_model_backend_selection_and_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    info = build_info()
    assert {"cython_available", "default_backend", "reason", "kernel_module"} <= set(info)
    assert info["default_backend"] in ("cython", "numpy")
    with pytest.raises(LoadflowError):
        resolve_backend("fortran")
    monkeypatch.setenv("GRIDTWIN_BACKEND", "numpy")
    assert GridModel(grids.load("ieee9"), backend="auto").backend == "numpy"
    monkeypatch.setenv("GRIDTWIN_BACKEND", "bogus")
    with pytest.raises(LoadflowError):
        resolve_backend("auto")


def test_model_cython_requested_without_kernel_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import twin.loadflow as lf

    monkeypatch.delenv("GRIDTWIN_BACKEND", raising=False)
    monkeypatch.setattr(lf, "_cy", None)
    monkeypatch.setattr(lf, "_CY_REASON", "no compiler on this machine")
    with pytest.raises(lf.BackendUnavailable, match="no compiler"):
        GridModel(grids.load("ieee9"), backend="cython")
    assert lf.build_info()["cython_available"] is False
    assert GridModel(grids.load("ieee9"), backend="auto").backend == "numpy"


def test_model_solution_results_survive_a_recompile(backend: str) -> None:
    net = grids.load("ieee30")
    model = GridModel(net, backend=backend)
    sol = model.solve()
    ref = _runpp(net)
    model.update("line", "in_service", [False], index=[net.line.index[3]])
    # results of the earlier solution still describe the earlier topology
    np.testing.assert_allclose(sol.line_p_from_mw, ref.res_line.p_from_mw, atol=1e-4)
    model.to_net()  # solves the new topology first
    ref2 = _runpp(net)
    np.testing.assert_allclose(net.res_line.p_from_mw, ref2.res_line.p_from_mw, atol=1e-4)
    assert net.res_line.p_from_mw.iloc[3] == 0.0


def test_model_unchanged_status_does_not_recompile(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    model = GridModel(net, backend=backend)
    model.solve()
    plan = model._plan
    sw = net.switch.index[0]
    model.update("switch", "closed", [bool(net.switch.at[sw, "closed"])], index=[sw])
    t = net.trafo.index[net.trafo.tap_pos.notna()][0]
    model.update("trafo", "tap_pos", [net.trafo.at[t, "tap_pos"]], index=[t])
    assert model._plan is plan and model.analyses == 1


def test_model_full_vector_fast_path_agrees_with_checked_path(backend: str) -> None:
    net = grids.load("mv_oberrhein")
    fast = GridModel(copy.deepcopy(net), backend=backend)
    checked = GridModel(copy.deepcopy(net), backend=backend)
    fast.solve()
    checked.solve()
    p = net.load.p_mw.to_numpy(float) * 1.2
    q = np.repeat(net.load.q_mvar.to_numpy(float) * 0.8, 2)[::2]  # strided float64: fast path
    fast.update("load", "p_mw", p)
    fast.update("load", "q_mvar", q)
    checked.update("load", "p_mw", p.tolist())  # a list takes the checked path
    checked.update("load", "q_mvar", q.tolist(), index=list(net.load.index))
    a, b = fast.solve(), checked.solve()
    np.testing.assert_allclose(a.vm_pu, b.vm_pu, atol=1e-12)
    np.testing.assert_allclose(a.get("load", "p_mw"), b.get("load", "p_mw"), atol=1e-12)
    # the caller's net object holds the inputs without going through model.net
    np.testing.assert_array_equal(fast._net.load.p_mw.to_numpy(), p)
    np.testing.assert_array_equal(fast.net.load.q_mvar.to_numpy(), q)
    ref = _runpp(fast.net)
    assert np.nanmax(np.abs(a.vm_pu - ref.res_bus.vm_pu.to_numpy())) < 1e-6
    # a rejected full vector (inf) leaves inputs and the next solve untouched
    bad = p * 2
    bad[-1] = np.inf
    with pytest.raises(InvalidInput) as info:
        fast.update("load", "p_mw", bad)
    assert info.value.element == net.load.index[-1] and info.value.column == "p_mw"
    np.testing.assert_array_equal(fast.net.load.p_mw.to_numpy(), p)
    np.testing.assert_allclose(fast.solve().vm_pu, a.vm_pu, atol=1e-12)
