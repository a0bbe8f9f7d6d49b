"""twin.n_minus_1 and twin.solve_batch against one-by-one pandapower runs, both backends."""

from __future__ import annotations

import copy

import numpy as np
import pandapower as pp
import pytest

import grids
import twin
from twin.errors import InvalidInput
from twin.loadflow import build_info
from twin.model import GridModel

BACKENDS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]


def _loading(net) -> np.ndarray:
    parts = [net.res_line.loading_percent.to_numpy()]
    if len(net.trafo):
        parts.append(net.res_trafo.loading_percent.to_numpy())
    return np.nan_to_num(np.concatenate(parts))


def _compare_every_outage(name: str, backend: str) -> None:
    net = grids.load(name)
    net["_ppc"] = None
    model = GridModel(net, backend=backend)
    res = twin.n_minus_1(model, threads=1)
    expected = [("line", int(i)) for i in net.line.index[net.line.in_service]]
    expected += [("trafo", int(i)) for i in net.trafo.index[net.trafo.in_service]]
    assert res.element == expected
    assert res.vm_pu.shape == (len(expected), len(net.bus))
    assert res.loading_percent.shape == (len(expected), len(net.line) + len(net.trafo))
    for k, (table, index) in enumerate(res.element):
        ref = copy.deepcopy(net)
        ref[table].at[index, "in_service"] = False
        pp.runpp(ref, lightsim2grid=False)
        vm = ref.res_bus.vm_pu.to_numpy()
        assert res.converged[k]
        np.testing.assert_array_equal(np.isnan(res.vm_pu[k]), np.isnan(vm), err_msg=str(k))
        assert res.islanded[k] == bool(res.unsupplied[k])
        assert np.nanmax(np.abs(res.vm_pu[k] - vm)) < 1e-6, (table, index)
        np.testing.assert_allclose(res.loading_percent[k], _loading(ref), atol=1e-4, rtol=0)
        assert res.min_vm_pu[k] == pytest.approx(np.nanmin(vm), abs=1e-6)
        assert res.max_loading_percent[k] == pytest.approx(_loading(ref).max(), abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["ieee14", "cigre_mv"])
def test_n_minus_1_equals_one_by_one_pandapower(name: str, backend: str) -> None:
    _compare_every_outage(name, backend)


@pytest.mark.parametrize("name", ["ieee30", "ieee118"])
def test_n_minus_1_equals_one_by_one_pandapower_kernel(name: str) -> None:
    _compare_every_outage(name, BACKENDS[0])


def test_n_minus_1_islanding_outage_keeps_the_supplied_part() -> None:
    net = grids.load("ieee118")
    model = GridModel(net, backend=BACKENDS[0])
    res = twin.n_minus_1(model, [("line", int(net.line.index[7]))])
    assert res.converged[0] and res.islanded[0]
    assert res.unsupplied[0] == 1  # the generator bus 9 alone
    assert np.isfinite(res.vm_pu[0]).sum() == len(net.bus) - 1


def test_n_minus_1_threads_agree_and_model_is_unchanged() -> None:
    net = grids.load("ieee118")
    model = GridModel(net, backend=BACKENDS[0])
    before = model.solve().vm_pu.copy()
    one = twin.n_minus_1(model, threads=1)
    two = twin.n_minus_1(model, threads=2)
    np.testing.assert_array_equal(one.vm_pu, two.vm_pu)
    np.testing.assert_array_equal(one.loading_percent, two.loading_percent)
    np.testing.assert_array_equal(model.solve().vm_pu, before)


def test_n_minus_1_bad_elements_are_named() -> None:
    net = grids.load("ieee14")
    model = GridModel(net, backend=BACKENDS[0])
    with pytest.raises(InvalidInput, match="line or trafo"):
        twin.n_minus_1(model, [("bus", 1)])
    with pytest.raises(InvalidInput, match="line or trafo"):
        twin.n_minus_1(model, [("line", 999)])
    model.update("line", "in_service", [False], index=[3])
    with pytest.raises(InvalidInput, match="in-service"):
        twin.n_minus_1(model, [("line", 3)])
    with pytest.raises(InvalidInput, match="threads"):
        twin.n_minus_1(model, threads=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solve_batch_equals_one_by_one_solves(backend: str) -> None:
    net = grids.load("ieee30")
    model = GridModel(net, backend=backend)
    model.solve()
    rng = np.random.default_rng(5)
    p0 = net.load.p_mw.to_numpy()
    q0 = net.load.q_mvar.to_numpy()
    scale = rng.uniform(0.7, 1.3, size=(6, 1))
    res = twin.solve_batch(model, p_mw=p0 * scale, q_mvar=q0 * scale, threads=2)
    assert res.converged.all()
    check = GridModel(copy.deepcopy(net), backend=backend)
    for k in range(6):
        check.update("load", "p_mw", p0 * scale[k])
        check.update("load", "q_mvar", q0 * scale[k])
        sol = check.solve()
        np.testing.assert_allclose(res.vm_pu[k], sol.vm_pu, atol=1e-8)
        np.testing.assert_allclose(res.loading_percent[k, : len(net.line)],
                                   sol.line_loading_percent, atol=1e-6)  # fmt: skip


def test_solve_batch_bad_shapes_are_named() -> None:
    net = grids.load("ieee14")
    model = GridModel(net, backend=BACKENDS[0])
    with pytest.raises(InvalidInput, match="cases"):
        twin.solve_batch(model, p_mw=np.ones(len(net.load)))
    bad = np.ones((2, len(net.load)))
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInput, match="finite"):
        twin.solve_batch(model, p_mw=bad)
