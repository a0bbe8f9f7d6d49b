"""The two kernels (Cython and NumPy reference): one signature, same answers, same errors."""

from __future__ import annotations

import numpy as np
import pytest

import grids
from twin.errors import LoadflowNotConverged
from twin.loadflow import _reference, build_info, kernel
from twin.model import GridModel

KERNELS = ["cython", "numpy"] if build_info()["cython_available"] else ["numpy"]


def _system(name: str) -> dict:
    """The compiled arrays of a bundled grid, taken from a GridModel."""
    m = GridModel(grids.load(name), backend="numpy")
    p, q = m._sbus(m._qzero)
    vm = m._vm.copy()
    vm[m._fixed] = m._vset[m._fixed]
    return {
        "indptr": m._y_indptr,
        "indices": m._y_indices,
        "y_re": m._y_re,
        "y_im": m._y_im,
        "kind": m._kind0,
        "p_spec": p,
        "q_spec": q,
        "vset": m._vset,
        "vm": vm,
        "va": m._va.copy(),
    }


def _run(name: str, sysd: dict, **kw) -> tuple[int, float, np.ndarray, np.ndarray]:
    k = kernel(name)
    plan = k.analyse(sysd["indptr"], sysd["indices"], sysd["kind"])
    vm, va = sysd["vm"].copy(), sysd["va"].copy()
    args = [sysd[a] for a in ("indptr", "indices", "y_re", "y_im", "kind", "p_spec", "q_spec")]
    it, nrm = k.newton(plan, *args, sysd["vset"], vm, va, **kw)
    return it, nrm, vm, va


@pytest.mark.parametrize("grid", ["ieee30", "mv_oberrhein", "case1354pegase"])
def test_loadflow_kernels_agree_and_leave_inputs_alone(grid: str) -> None:
    sysd = _system(grid)
    for a in sysd.values():
        a.setflags(write=False)  # read-only inputs must be accepted
    before = {k: v.copy() for k, v in sysd.items()}
    out = {name: _run(name, sysd, tol=1e-10, max_iter=15) for name in KERNELS}
    for name, (it, nrm, _vm, _va) in out.items():
        assert nrm <= 1e-10 and it >= 1, f"{name}: {it} iterations, mismatch {nrm}"
    if len(out) == 2:
        np.testing.assert_allclose(out["cython"][2], out["numpy"][2], atol=1e-9)
        np.testing.assert_allclose(out["cython"][3], out["numpy"][3], atol=1e-9)
        assert out["cython"][0] == out["numpy"][0]
    for k, v in sysd.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"input {k} was mutated")


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_kernel_not_converged_fields(name: str) -> None:
    sysd = _system("ieee14")
    sysd = {k: v.copy() for k, v in sysd.items()}
    sysd["p_spec"] = sysd["p_spec"] * 50.0
    with pytest.raises(LoadflowNotConverged) as info:
        _run(name, sysd, tol=1e-8, max_iter=6)
    assert info.value.iterations == 6
    assert 0 <= info.value.worst_bus < sysd["kind"].shape[0]
    assert info.value.mismatch > 1e-8


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_kernel_singular_jacobian_is_an_error(name: str) -> None:
    # bus 1 is connected to nothing: its Jacobian block is zero, never a silent answer
    sysd = {
        "indptr": np.array([0, 1, 2], dtype=np.int32),
        "indices": np.array([0, 1], dtype=np.int32),
        "y_re": np.zeros(2),
        "y_im": np.zeros(2),
        "kind": np.array([0, 2], dtype=np.int8),
        "p_spec": np.array([0.0, -0.5]),
        "q_spec": np.zeros(2),
        "vset": np.ones(2),
        "vm": np.ones(2),
        "va": np.zeros(2),
    }
    with pytest.raises(LoadflowNotConverged, match="singular"):
        _run(name, sysd)


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_kernel_rejects_wrong_sizes(name: str) -> None:
    sysd = _system("ieee9")
    sysd["p_spec"] = sysd["p_spec"][:-1]
    with pytest.raises(ValueError, match="expected"):
        _run(name, sysd)


def test_loadflow_reference_plan_is_cheap() -> None:
    plan = _reference.analyse(np.array([0, 1]), np.array([0]), np.array([0], dtype=np.int8))
    assert plan.n_bus == 1 and plan.memory_bytes() >= 0


def _stepper(name: str, sysd: dict, groups: list | None = None):
    k = kernel(name)
    plan = k.analyse(sysd["indptr"], sysd["indices"], sysd["kind"])
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    y = [sysd[a] for a in ("indptr", "indices", "y_re", "y_im", "kind", "vset")]
    base = 100.0  # the stepper takes MW / Mvar and a 1 / base_mva factor
    return k.Stepper(
        plan, *y, sysd["p_spec"] * base, sysd["q_spec"] * base, groups or [empty] * 4, 1 / base
    )


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_stepper_matches_newton_and_reads_its_inputs_in_place(name: str) -> None:
    sysd = _system("mv_oberrhein")
    it, nrm, vm, va = _run(name, sysd, tol=1e-10, max_iter=15)
    st = _stepper(name, sysd)
    vm2, va2 = sysd["vm"].copy(), sysd["va"].copy()
    it2, nrm2 = st.run(vm2, va2, None, None, 1e-10, 15)
    assert it2 == it and nrm2 <= 1e-10
    np.testing.assert_allclose(vm2, vm, atol=1e-12)
    np.testing.assert_allclose(va2, va, atol=1e-12)
    # one element group: 2 MW (weight 1) at the first PQ bus, read from the array at each call
    bus = int(np.flatnonzero(sysd["kind"] == 2)[0])
    val = np.array([0.0])
    grp = (np.array([bus, -1], dtype=np.int64), np.array([1.0, 5.0]), np.array([0.0, 9.0]))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    st = _stepper(name, sysd, [grp, empty, empty, empty])
    val = grp[2]
    p0, q0 = st.spec()
    val[0] = 2.0  # in place, like GridModel.update; the -1 bus entry is never added
    p1, q1 = st.spec(np.full(q0.shape[0], 3.0))
    expected = p0.copy()
    expected[bus] -= 0.02
    np.testing.assert_allclose(p1, expected, atol=1e-15)
    np.testing.assert_allclose(q1, q0 + 0.03, atol=1e-15)


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_stepper_rejects_wrong_sizes(name: str) -> None:
    sysd = _system("ieee9")
    st = _stepper(name, sysd)
    with pytest.raises(ValueError, match="expected"):
        st.run(sysd["vm"][:-1].copy(), sysd["va"].copy())
    bad = (np.array([99], dtype=np.int64), np.ones(1), np.ones(1))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="expected"):
        _stepper(name, sysd, [bad, empty, empty, empty])


@pytest.mark.parametrize("name", KERNELS)
def test_loadflow_copy_if_finite_writes_all_or_nothing(name: str) -> None:
    k = kernel(name)
    dst = np.zeros(3)
    src = np.arange(6.0)[::2]  # strided and read-only sources are accepted
    src.setflags(write=False)
    assert k.copy_if_finite(src, dst) and dst.tolist() == [0.0, 2.0, 4.0]
    for bad in (np.nan, np.inf, -np.inf):
        assert not k.copy_if_finite(np.array([9.0, 9.0, bad]), dst)
        assert dst.tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="expected"):
        k.copy_if_finite(np.zeros(2), dst)


@pytest.mark.skipif(len(KERNELS) < 2, reason="needs the compiled kernel")
def test_result_kernels_agree_with_the_reference() -> None:
    rng = np.random.default_rng(3)
    n, rows = 12, 20
    vm = rng.uniform(0.9, 1.1, n)
    va = rng.uniform(-4.0, 4.0, n)  # beyond +-pi: the angle is wrapped like np.angle
    fb = rng.integers(0, n + 2, rows).astype(np.int64)  # >= n: not energized (NaN)
    tb = rng.integers(0, n + 2, rows).astype(np.int64)
    stamps = np.ascontiguousarray(rng.normal(size=(8, rows)))
    stamps[:, 3] = 0.0  # a branch that is not solved
    scale = np.ascontiguousarray(rng.uniform(0.5, 2.0, size=(5, rows)))
    scale[4, 5] = np.inf  # a line without a rating
    pos = np.array([0, 3, 7], dtype=np.int64)
    indptr = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
    indices = np.sort(rng.integers(0, n, (n, 3)), axis=1).reshape(-1).astype(np.int32)
    y = np.linspace(-1.0, 1.0, 3 * n)
    out = {}
    for name in ("cython", "numpy"):
        k = kernel(name)
        polar = k.polar(vm, va, np.empty((3, n)))
        res = k.branch_results(vm, polar, n, 100.0, fb, tb, stamps, scale, np.empty((14, rows)))
        p, q = np.empty(3), np.empty(3)
        k.bus_power(indptr, indices, y, y[::-1].copy(), polar, pos, p, q)
        out[name] = (polar, res, p, q)
    for a, b in zip(out["cython"], out["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)
    with pytest.raises(ValueError, match="expected"):
        kernel(KERNELS[0]).branch_results(
            vm, out["numpy"][0], n, 100.0, fb, tb, stamps, scale, np.empty((13, rows))
        )


@pytest.mark.skipif(len(KERNELS) < 2, reason="needs the compiled kernel")
def test_gen_pq_and_rows_add_agree_with_the_reference() -> None:
    rng = np.random.default_rng(5)
    n = 10
    vm = rng.uniform(0.9, 1.1, n)
    va = rng.uniform(-0.5, 0.5, n)
    indptr = np.arange(0, 3 * n + 1, 3, dtype=np.int32)
    indices = np.sort(rng.integers(0, n, (n, 3)), axis=1).reshape(-1).astype(np.int32)
    y_re, y_im = rng.normal(size=3 * n), rng.normal(size=3 * n)
    rows = np.array([1, 4, 8], dtype=np.int64)
    gpos = np.array([0, 1, 1, 2], dtype=np.int64)  # two gens share the second bus
    q_a, q_b = rng.uniform(0.2, 1.0, 4), rng.normal(size=4)
    ptr = np.array([0, 2, 2, 3], dtype=np.int64)  # CSR over the three rows
    idx = np.array([4, 0, 2], dtype=np.int64)
    w = np.array([1.0, 0.5, 2.0])
    x = rng.normal(size=5)
    out = {}
    for name in ("cython", "numpy"):
        k = kernel(name)
        polar = k.polar(vm, va, np.empty((3, n)))
        pd, qd = np.full(3, 0.25), np.full(3, -0.5)
        k.rows_add(ptr, idx, w, x, pd)
        p_bus, q_gen = np.empty(3), np.empty(4)
        k.gen_pq(indptr, indices, y_re, y_im, polar, rows, pd, qd, 100.0, gpos, q_a, q_b,
                 p_bus, q_gen)  # fmt: skip
        out[name] = (pd, p_bus, q_gen)
    np.testing.assert_allclose(out["cython"][0], [0.25 + x[4] + 0.5 * x[0], 0.25, 0.25 + 2 * x[2]])
    for a, b in zip(out["cython"], out["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    for name in KERNELS:
        k = kernel(name)
        with pytest.raises(ValueError, match="expected|outside"):
            k.rows_add(ptr, np.array([4, 0, 9], dtype=np.int64), w, x, np.zeros(3))
        with pytest.raises(ValueError, match="expected"):
            k.gen_pq(indptr, indices, y_re, y_im, np.empty((3, n)), rows, np.zeros(2),
                     np.zeros(3), 100.0, gpos, q_a, q_b, np.empty(3), np.empty(4))  # fmt: skip


def _result_inputs(name: str, edit=None):
    """A solved GridModel's compiled structure and snapshot (what Results is built from)."""
    net = grids.load(name)
    if edit is not None:
        edit(net)
    model = GridModel(net, backend="numpy")
    model.solve()
    snap = model._last_snap
    return model, snap["c"], snap


def _results(k, c, snap):
    el, br = c.element, c.branch
    line, trafo = br.get("line"), br.get("trafo")
    inp = snap["inputs"]
    plan = k.Results(
        c.n, c.base_mva, c.y_indptr, c.y_indices, c.y_re, c.y_im,
        None if line is None else (line.fb, line.tb, line.stamps, line.scale),
        None if trafo is None else (trafo.fb, trafo.tb, trafo.stamps, trafo.scale),
        el.get("gen_rows"), *(el[t].factor if t in el else None for t in ("load", "sgen")),
        len(inp[("load", "p_mw")]), len(inp[("sgen", "p_mw")]),
    )  # fmt: skip
    args = [inp[key] for key in (("load", "p_mw"), ("sgen", "p_mw"), ("load", "q_mvar"),
                                 ("sgen", "q_mvar"))]  # fmt: skip
    return plan, (snap["vm"], snap["va"], snap["gen_pg"], *args)


def _two_slacks(net) -> None:
    """Two ext_grids and a PV gen on one bus (the slack split), an out-of-service gen."""
    import pandapower as pp

    eg = net.ext_grid.index[0]
    bus = int(net.ext_grid.at[eg, "bus"])
    vm = float(net.ext_grid.at[eg, "vm_pu"])
    pp.create_ext_grid(net, bus, vm_pu=vm, slack_weight=3.0)
    pp.create_gen(net, bus, p_mw=0.05, vm_pu=vm, min_q_mvar=-1.0, max_q_mvar=1.0)
    if len(net.gen) > 2:
        net.gen.at[net.gen.index[0], "in_service"] = False


@pytest.mark.skipif(len(KERNELS) < 2, reason="needs the compiled kernel")
@pytest.mark.parametrize(
    ("grid", "edit"), [("ieee118", None), ("cigre_mv", _two_slacks), ("mv_oberrhein", None),
                       ("ieee30", _two_slacks)],
)  # fmt: skip
def test_results_kernels_agree_and_leave_inputs_alone(grid: str, edit) -> None:
    _model, c, snap = _result_inputs(grid, edit)
    out = {}
    for name in KERNELS:
        plan, args = _results(kernel(name), c, snap)
        for a in args:
            a.setflags(write=False)  # read-only inputs must be accepted
        before = [a.copy() for a in args]
        buf = plan.compute(*args)
        assert buf.shape == (plan.size,) and plan.offsets["size"][0] == plan.size
        again = plan.compute(*args, np.full(plan.size, np.nan))
        work = plan.offsets["work"][0]  # scratch after the results
        np.testing.assert_array_equal(buf[:work], again[:work], err_msg=f"{name}: out given")
        for a, b in zip(args, before):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: an input was mutated")
            a.setflags(write=True)
        out[name] = (buf[:work], plan.offsets)
    assert out["cython"][1] == out["numpy"][1]
    np.testing.assert_allclose(out["cython"][0], out["numpy"][0], rtol=1e-12, atol=1e-9,
                               equal_nan=True)  # fmt: skip


@pytest.mark.parametrize("name", KERNELS)
def test_results_kernel_rejects_bad_maps_and_sizes(name: str) -> None:
    k = kernel(name)
    _model, c, snap = _result_inputs("cigre_mv", _two_slacks)
    plan, args = _results(k, c, snap)
    with pytest.raises(ValueError, match="expected"):
        plan.compute(args[0][:-1], *args[1:])  # vm of the wrong length
    with pytest.raises(ValueError, match="expected"):
        plan.compute(*args[:3], args[3][:-1], *args[4:])  # load inputs of the wrong length
    with pytest.raises(ValueError, match="expected"):
        plan.compute(*args, np.empty(plan.size - 1))
    line = c.branch["line"]
    bad_fb = line.fb.copy()
    bad_fb[0] = -1
    with pytest.raises(ValueError, match="expected indices"):
        k.Results(c.n, c.base_mva, c.y_indptr, c.y_indices, c.y_re, c.y_im,
                  (bad_fb, line.tb, line.stamps, line.scale))  # fmt: skip
    from types import SimpleNamespace

    gen = c.element["gen_rows"]
    bad_gen = SimpleNamespace(**{**vars(gen), "g_bus": np.full(len(gen.g_bus), c.n)})
    with pytest.raises(ValueError, match="expected indices"):
        k.Results(c.n, c.base_mva, c.y_indptr, c.y_indices, c.y_re, c.y_im, None, None,
                  bad_gen, None, None, len(args[3]), len(args[4]))  # fmt: skip


@pytest.mark.parametrize("name", KERNELS)
def test_take_copies_a_span(name: str) -> None:
    take = kernel(name).take
    buf = np.arange(10.0)
    buf.setflags(write=False)
    got = take(buf, (2, 5))
    assert got.tolist() == [2.0, 3.0, 4.0] and got.flags.writeable
    got[0] = -1.0  # a copy: the buffer keeps its values
    assert buf[2] == 2.0
    assert take(buf, (4, 4)).shape == (0,)
    for bad in ((-1, 3), (5, 4), (0, 11)):
        with pytest.raises(ValueError, match="expected"):
            take(buf, bad)
