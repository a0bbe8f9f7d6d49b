"""Load-flow benchmark: the same workload for every method, one process, markdown tables.

Every method solves to the same per-unit tolerance (``--tol``, on the ``sn_mva`` base:
lightsim2grid divides its tolerance by ``sn_mva``, so it is given ``tol * sn_mva``).

1. Injection steps: consecutive solves, each after scaling every load (P and Q) by a seeded random
   factor in 0.7-1.3 (one factor per load and step); times include applying the new loads.
   "solve" is the solve only, "+results" also reads line, trafo, ext_grid, gen, sgen and load
   results (gridtwin: ``Solution.get``; lightsim2grid: its ``get_*_res`` arrays; pandapower's
   runpp always writes every result).
2. Topology toggle + solve (median): one line out / back in; a line switch open / closed (on
   radial grids the variant with every line switch closed); a trafo tap up / down; a bus-bus
   switch open / closed (the grid's own, or a bus coupler added to ieee14 / ieee118 /
   case2869pegase).
3. N-1 over the in-service lines and trafos: gridtwin ``twin.n_minus_1`` vs lightsim2grid's
   ContingencyAnalysisCPP (same threads) vs pandapower's contingency module (a few cases).

    python bench/loadflow.py [--quick] [--cases ...] [--steps 1000] [--pegase-steps 200]
                             [--pp-steps 50] [--methods ...] [--threads 1 2] [--n1-max N]

Run it from the repository root after ``pip install .`` (the installed kernel is imported) or
with ``PYTHONPATH=.`` after ``python setup.py build_ext --inplace``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:  # the installed gridtwin first; the source tree only when nothing is installed
    import twin  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py beside this file

from _common import (  # noqa: E402
    TOL,
    in_service_branches,
    ls2g_v_start,
    run_n1_ls2g,
    run_n1_pandapower,
)

DEFAULT_CASES = [
    "ieee14", "ieee118", "mv_oberrhein", "case1354pegase", "case2869pegase", "case9241pegase",
    "urban_district",
]  # fmt: skip
METHODS = ["pp_runpp", "pp_recycle", "ls2g_step", "ls2g_batch", "gridtwin_cython", "gridtwin_numpy"]
QUICK_CASES = ["ieee14", "cigre_mv", "ieee118", "mv_oberrhein", "case2869pegase"]
SLOW = {"pp_runpp", "pp_recycle"}


def _factors(seed: int, steps: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.7, 1.3, size=(steps, n))


def _time_steps(step: Callable[[int], int | None], steps: int) -> tuple[list[float], list[int]]:
    times: list[float] = []
    iters: list[int] = []
    for k in range(steps):
        t0 = time.perf_counter()
        it = step(k)
        times.append(time.perf_counter() - t0)
        if it is not None:
            iters.append(int(it))
    return times, iters


def run_pandapower(net, fac, recycle: bool):
    import pandapower as pp

    net = copy.deepcopy(net)
    net["_ppc"] = None
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()
    kwargs: dict = {"lightsim2grid": False, "tolerance_mva": TOL}
    if recycle:
        pp.runpp(net, **kwargs)  # the recycle mode needs one full run first
        kwargs["recycle"] = {"bus_pq": True, "trafo": False, "gen": False}

    def step(k: int) -> int:
        net.load["p_mw"] = p0 * fac[k]
        net.load["q_mvar"] = q0 * fac[k]
        pp.runpp(net, **kwargs)
        return int(net._ppc["iterations"])

    return _time_steps(step, fac.shape[0])


def _ls2g_results(model) -> None:
    for get in (model.get_line_res1, model.get_line_res2, model.get_trafo_res1,
                model.get_trafo_res2, model.get_gen_res, model.get_sgens_res,
                model.get_loads_res):  # fmt: skip
        get()


def run_ls2g_step(net, fac, results: bool = False):
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    p0 = net.load.p_mw.to_numpy(float)
    q0 = net.load.q_mvar.to_numpy(float)
    tol = TOL * net.sn_mva  # lightsim2grid divides by sn_mva
    first = model.ac_pf(ls2g_v_start(net), 10, tol)
    if first.shape[0] == 0:
        raise RuntimeError("lightsim2grid did not converge on the base case")
    state = {"v": first}
    mask = np.ones(len(p0), dtype=bool)

    def step(k: int) -> int:
        model.update_loads_p(mask, (p0 * fac[k]).astype(np.float32))
        model.update_loads_q(mask, (q0 * fac[k]).astype(np.float32))
        v = model.ac_pf(state["v"], 10, tol)
        if v.shape[0] == 0:
            raise RuntimeError(f"lightsim2grid did not converge at step {k}")
        if results:
            _ls2g_results(model)
        state["v"] = v
        return int(model.get_solver().get_nb_iter())

    return _time_steps(step, fac.shape[0])


def run_ls2g_batch(net, fac):
    from lightsim2grid.lightsim2grid_cpp import TimeSeriesCPP
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    tol = TOL * net.sn_mva
    v0 = model.ac_pf(ls2g_v_start(net), 10, tol)
    ts = TimeSeriesCPP(model)
    steps = fac.shape[0]
    # lightsim2grid counts its own generators (ext_grids and slack included): use its targets
    gens = np.array([g.target_p_mw for g in model.get_generators()], dtype=float)
    sgens = np.array([g.target_p_mw for g in model.get_static_generators()], dtype=float)
    gen_p = np.ascontiguousarray(np.tile(gens, (steps, 1)))
    sgen_p = np.ascontiguousarray(np.tile(sgens, (steps, 1)))
    load_p = np.ascontiguousarray(net.load.p_mw.to_numpy(float) * fac)
    load_q = np.ascontiguousarray(net.load.q_mvar.to_numpy(float) * fac)
    t0 = time.perf_counter()
    status = ts.compute_Vs(gen_p, sgen_p, load_p, load_q, v0, 10, tol)
    total = time.perf_counter() - t0
    if status != 1:
        raise RuntimeError(f"TimeSeriesCPP status {status}")
    try:
        iters = [int(x) for x in np.asarray(ts.get_row_nb_iter()).ravel()]
    except Exception:  # older builds have no per-row iteration counts
        iters = []
    return [total / steps] * steps, iters


# what "+results" reads per step: both ends' flows of every line and trafo (lightsim2grid's
# get_line_res1 / res2 and get_trafo_res1 / res2 give P, Q, V, angle at each end), line
# loading, and the P / Q of ext_grid, gen (lightsim2grid's get_gen_res covers both), sgen, load
_RESULTS = [
    ("line", "p_from_mw"), ("line", "q_from_mvar"), ("line", "p_to_mw"), ("line", "q_to_mvar"),
    ("line", "loading_percent"), ("trafo", "p_hv_mw"), ("trafo", "q_hv_mvar"),
    ("trafo", "p_lv_mw"), ("trafo", "q_lv_mvar"), ("ext_grid", "p_mw"), ("ext_grid", "q_mvar"),
    ("gen", "p_mw"), ("gen", "q_mvar"), ("sgen", "p_mw"), ("sgen", "q_mvar"), ("load", "p_mw"),
    ("load", "q_mvar"),
]  # fmt: skip


def run_gridtwin(net, fac, backend: str, results: bool = False):
    from twin.model import GridModel

    net = copy.deepcopy(net)
    model = GridModel(net, backend=backend, tolerance_mva=TOL)
    model.solve()
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()
    wanted = [(t, c) for t, c in _RESULTS if len(net[t])]

    def step(k: int) -> int:
        model.update("load", "p_mw", p0 * fac[k])
        model.update("load", "q_mvar", q0 * fac[k])
        sol = model.solve()
        if results:
            for table, column in wanted:
                sol.get(table, column)
        return sol.iterations

    return _time_steps(step, fac.shape[0])


def gridtwin_memory(net, backend: str = "cython") -> tuple[float, float]:
    """(tracemalloc peak MB while compiling, compiled arrays MB) for one GridModel."""
    from twin.model import GridModel

    net = copy.deepcopy(net)
    gc.collect()
    tracemalloc.start()
    model = GridModel(net, backend=backend)
    model.solve()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 1e6, model.memory_bytes() / 1e6


def _toggle_line(net) -> int | None:
    """A line whose outage keeps every bus supplied (the same one for every method)."""
    from twin import batch
    from twin.model import GridModel

    model = GridModel(copy.deepcopy(net))
    first = net.line.index[net.line.in_service][:50]
    res = batch.n_minus_1(model, [("line", int(i)) for i in first])
    ok = [k for k in range(len(res)) if res.converged[k] and not res.islanded[k]]
    if not ok:  # a radial grid: every outage cuts a feeder off (patched too)
        ok = [k for k in range(len(res)) if res.converged[k]]
    if not ok:
        return None
    # prefer a line the model patches (a line with an open switch recompiles: its auxiliary
    # bus would be left without supply)
    for k in ok[len(ok) // 2 :] + ok[: len(ok) // 2]:
        line = int(res.element[k][1])
        before = model.patches
        model.update("line", "in_service", [False], index=[line])
        patched = model.patches > before
        model.update("line", "in_service", [True], index=[line])
        if patched:
            return line
    return int(res.element[ok[len(ok) // 2]][1])


def _toggle_gridtwin(net, table: str, column: str, element: int, values: tuple, steps: int):
    """Alternate ``table.column`` of ``element`` between ``values`` (odd, even step) + solve."""
    from twin.model import GridModel

    model = GridModel(copy.deepcopy(net), tolerance_mva=TOL)
    model.solve()

    def step(k: int) -> int:
        model.update(table, column, [values[k % 2]], index=[element])
        return model.solve().iterations

    return _time_steps(step, steps)


def run_toggle_gridtwin(net, line: int, steps: int):
    return _toggle_gridtwin(net, "line", "in_service", line, (False, True), steps)


def _ls2g_toggle(net, make_change: Callable[[Any], Callable[[int], None]], steps: int):
    """lightsim2grid: ``change(k)`` (made by ``make_change(model)``) then ``ac_pf`` from the
    last state, per step."""
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    tol = TOL * net.sn_mva  # lightsim2grid divides its tolerance by sn_mva
    state = {"v": model.ac_pf(ls2g_v_start(net), 10, tol)}
    change = make_change(model)

    def step(k: int) -> int:
        change(k)
        v = model.ac_pf(state["v"], 10, tol)
        if v.shape[0] == 0:
            raise RuntimeError(f"lightsim2grid did not converge at toggle {k}")
        state["v"] = v
        return int(model.get_solver().get_nb_iter())

    return _time_steps(step, steps)


def run_toggle_ls2g(net, line: int, steps: int):
    """lightsim2grid: the line deactivated / reactivated + ac_pf."""
    pos = int(net.line.index.get_loc(line))

    def make(model: Any) -> Callable[[int], None]:
        off, on = model.deactivate_powerline, model.reactivate_powerline
        return lambda k: (off if k % 2 == 0 else on)(pos)

    return _ls2g_toggle(net, make, steps)


def _patched_switch(net, et: str, limit: int) -> tuple[int | None, int | None]:
    """(the first closed ``et`` switch among the first ``limit`` that the model patches when it
    opens, the first closed ``et`` switch); None where there is none."""
    from twin.model import GridModel

    cands = net.switch.index[(net.switch.et == et) & net.switch.closed]
    if not len(cands):
        return None, None
    model = GridModel(copy.deepcopy(net))
    model.solve()
    for sw in cands[:limit]:
        before = model.patches
        model.update("switch", "closed", [False], index=[int(sw)])
        patched = model.patches > before
        model.update("switch", "closed", [True], index=[int(sw)])
        if patched:
            return int(sw), int(cands[0])
    return None, int(cands[0])


def _toggle_switch(net) -> int | None:
    """A closed line switch whose opening islands nothing and that the model patches."""
    return _patched_switch(net, "l", 60)[0]


def run_toggle_switch_gridtwin(net, sw: int, steps: int):
    return _toggle_gridtwin(net, "switch", "closed", sw, (False, True), steps)


def run_toggle_switch_ls2g(net, sw: int, steps: int):
    """lightsim2grid: the switched line end deactivated / reactivated + ac_pf."""
    line = int(net.switch.at[sw, "element"])
    pos = int(net.line.index.get_loc(line))
    side = 1 if int(net.switch.at[sw, "bus"]) == int(net.line.at[line, "from_bus"]) else 2

    def make(model: Any) -> Callable[[int], None]:
        off = getattr(model, f"deactivate_powerline_side{side}")
        on = getattr(model, f"reactivate_powerline_side{side}")
        return lambda k: (off if k % 2 == 0 else on)(pos)

    return _ls2g_toggle(net, make, steps)


def _with_coupler(net):
    """A copy of ``net`` with one bus split by a bus coupler (a closed bus-bus switch).

    The split bus is the load bus with the fewest lines (three or more); half of its lines move
    to the new bus, so both halves stay supplied when the coupler opens. None when no bus has
    three lines.
    """
    import pandapower as pp

    net = copy.deepcopy(net)
    ends = np.concatenate([net.line.from_bus.to_numpy(), net.line.to_bus.to_numpy()])
    count = np.bincount(ends.astype(np.int64), minlength=int(net.bus.index.max()) + 1)
    slack = set(net.ext_grid.bus.tolist()) | set(net.gen.bus.tolist())
    # the least-connected such bus: splitting a hub can leave a case that is hard for every
    # solver (case2869pegase's busiest bus: lightsim2grid diverges, gridtwin needs its DC retry)
    cands = [b for b in np.argsort(count, kind="stable") if count[b] >= 3 and int(b) not in slack]
    if not cands:
        return None
    bus = int(cands[0])
    new = pp.create_bus(net, vn_kv=net.bus.at[bus, "vn_kv"], name=f"{bus} coupled")
    lines = net.line.index[(net.line.from_bus == bus) | (net.line.to_bus == bus)]
    for line in lines[: len(lines) // 2]:
        for end in ("from_bus", "to_bus"):
            if net.line.at[line, end] == bus:
                net.line.at[line, end] = new
    pp.create_switch(net, bus, new, et="b", closed=True)
    net["_ppc"] = None
    return net


def _toggle_bus_switch(net) -> int | None:
    """A closed bus-bus switch, one the model patches if any (its opening may cut a feeder off);
    when none patches (an older model), the first one: its full conversion is timed."""
    patched, first = _patched_switch(net, "b", 20)
    return patched if patched is not None else first


def run_toggle_bus_switch_ls2g(net, sw: int, steps: int):
    """lightsim2grid: the elements of the switch's second bus moved onto its first bus (closed)
    and back (open), the emptied bus deactivated / reactivated (lightsim2grid does not fuse
    bus-bus switches itself: its ``change_bus_*`` methods are its topology change) + ac_pf."""
    a, b = int(net.switch.at[sw, "bus"]), int(net.switch.at[sw, "element"])
    pa, pb = int(net.bus.index.get_loc(a)), int(net.bus.index.get_loc(b))

    def at(table: str, column: str) -> list[int]:
        df = net[table]
        return [int(df.index.get_loc(i)) for i in df.index[df[column] == b]]

    moves = [("change_bus1_powerline", at("line", "from_bus")),
             ("change_bus2_powerline", at("line", "to_bus")),
             ("change_bus1_trafo", at("trafo", "hv_bus")),
             ("change_bus2_trafo", at("trafo", "lv_bus")), ("change_bus_load", at("load", "bus")),
             ("change_bus_gen", at("gen", "bus")), ("change_bus_sgen", at("sgen", "bus")),
             ("change_bus_shunt", at("shunt", "bus"))]  # fmt: skip

    def make(model: Any) -> Callable[[int], None]:
        calls = [(getattr(model, name), ids) for name, ids in moves if ids]

        def place(bus: int) -> None:
            for fn, ids in calls:
                for i in ids:
                    fn(i, bus)

        place(pa)  # the coupler closed: every element on the first bus
        model.deactivate_bus(pb)

        def change(k: int) -> None:
            if k % 2 == 0:  # open
                model.reactivate_bus(pb)
                place(pb)
            else:
                place(pa)
                model.deactivate_bus(pb)

        return change

    return _ls2g_toggle(net, make, steps)


def _toggle_tap(net) -> int | None:
    tapped = net.trafo.index[net.trafo.tap_pos.notna() & net.trafo.tap_max.notna()]
    tapped = [t for t in tapped if net.trafo.at[t, "tap_pos"] < net.trafo.at[t, "tap_max"]]
    return int(tapped[0]) if tapped else None


def run_toggle_tap_gridtwin(net, trafo: int, steps: int):
    tap0 = float(net.trafo.at[trafo, "tap_pos"])
    return _toggle_gridtwin(net, "trafo", "tap_pos", trafo, (tap0 + 1, tap0), steps)


def run_toggle_tap_ls2g(net, trafo: int, steps: int):
    """lightsim2grid: change_ratio_trafo between pandapower's two ratios + ac_pf."""
    pos = int(net.trafo.index.get_loc(trafo))
    step_pct = float(net.trafo.at[trafo, "tap_step_percent"])
    hv = str(net.trafo.at[trafo, "tap_side"]) == "hv"

    def make(model: Any) -> Callable[[int], None]:
        r0 = float(model.get_trafos()[pos].ratio)
        r1 = r0 * (1 + step_pct / 100) if hv else r0 / (1 + step_pct / 100)
        return lambda k: model.change_ratio_trafo(pos, r1 if k % 2 == 0 else r0)

    return _ls2g_toggle(net, make, steps)


def _n1_ls2g_solve_only(net, elements, threads: int) -> tuple[float, int]:
    """lightsim2grid's N-1 timed without reading its results back (the bench's N-1 table)."""
    return run_n1_ls2g(net, elements, threads, gather=False)


def run_n1_gridtwin(net, elements, threads: int) -> tuple[float, int]:
    """(cases per second, converged cases)."""
    import twin
    from twin.model import GridModel

    model = GridModel(copy.deepcopy(net), tolerance_mva=TOL)
    model.solve()
    t0 = time.perf_counter()
    res = twin.n_minus_1(model, elements, threads=threads)
    dt = time.perf_counter() - t0
    return len(res) / dt, int(res.converged.sum())


def _kernel_line() -> str:
    from twin.loadflow import build_info

    info = build_info()
    if info["cython_available"]:
        return f"gridtwin kernel: compiled ({info['kernel_module']})"
    return (
        "gridtwin kernel: NOT AVAILABLE - the compiled kernel twin.loadflow._newton is missing "
        f"({info['reason']}); the gridtwin_cython rows are skipped. Install with 'pip install .' "
        "and run from the repository root, or build in place with "
        "'python setup.py build_ext --inplace' and set PYTHONPATH=."
    )


def _cell(r, base) -> str:
    if isinstance(r, tuple):
        ratio = f", x{r[0] / base[0]:.1f}" if isinstance(base, tuple) and base[0] > 0 else ""
        return f"{r[0]:.4g} ({r[1]:.1f} it{ratio})"
    return str(r)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = f"{' '.join(QUICK_CASES)}, few steps, a bounded N-1 (about 1 min)"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--cases", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=1000, help="steps per non-pegase grid")
    parser.add_argument("--pegase-steps", type=int, default=200, help="steps per pegase grid")
    parser.add_argument("--pp-steps", type=int, default=50, help="steps for pandapower methods")
    parser.add_argument("--toggle-steps", type=int, default=200, help="toggles per grid")
    parser.add_argument(
        "--toggle-only", nargs="*", default=None,
        help="grids with only the line toggle row (default with --quick: case9241pegase)",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--n1-cases", nargs="+", default=None, help="grids of the N-1 table")
    parser.add_argument("--n1-max", type=int, default=None, help="at most this many outages")
    parser.add_argument("--n1-pp", type=int, default=20, help="outages for pandapower's module")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.pegase_steps, args.pp_steps, args.toggle_steps = 50, 10, 5, 10
        args.n1_max = args.n1_max or 300
        args.n1_pp = min(args.n1_pp, 5)
        args.methods = [m for m in args.methods if m != "gridtwin_numpy"]
    cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    toggle_only = args.toggle_only
    if toggle_only is None:
        toggle_only = ["case9241pegase"] if args.quick else []
    toggle_only = [c for c in toggle_only if c not in cases]
    n1_cases = args.n1_cases or [c for c in ("ieee118", "case2869pegase") if c in cases]
    warnings.filterwarnings("ignore")
    import grids
    from twin.loadflow import build_info

    kernel_line = _kernel_line()
    print("# " + kernel_line, file=sys.stderr, flush=True)
    methods = list(args.methods)
    if not build_info()["cython_available"]:
        methods = [m for m in methods if m != "gridtwin_cython"]
    cols = []  # (label, method, with results)
    for m in methods:
        cols.append((m, m, False))
        if m in ("ls2g_step", "gridtwin_cython", "gridtwin_numpy"):
            cols.append((m + " +results", m, True))
    rows, toggles, n1 = [], [], []
    memory = None
    for case in cases:
        net = grids.load(case)
        net["_ppc"] = None
        steps = args.pegase_steps if "pegase" in case else args.steps
        results: dict[str, tuple[float, float] | str] = {}
        for label, method, with_res in cols:
            n = min(steps, args.pp_steps) if method in SLOW else steps
            fac = _factors(args.seed, n, len(net.load))
            try:
                if method == "pp_runpp":
                    times, iters = run_pandapower(net, fac, recycle=False)
                elif method == "pp_recycle":
                    times, iters = run_pandapower(net, fac, recycle=True)
                elif method == "ls2g_step":
                    times, iters = run_ls2g_step(net, fac, with_res)
                elif method == "ls2g_batch":
                    times, iters = run_ls2g_batch(net, fac)
                else:
                    times, iters = run_gridtwin(net, fac, method.split("_")[1], with_res)
            except Exception as exc:  # a comparison method failing must not stop the table
                results[label] = f"failed: {type(exc).__name__}: {exc}"[:60]
                continue
            med = statistics.median(times) * 1e3
            it = statistics.mean(iters) if iters else float("nan")
            results[label] = (med, it)
            print(f"# {case:16s} {label:26s} {med:10.4f} ms  iters {it:.2f}  ({n} steps)",
                  file=sys.stderr, flush=True)  # fmt: skip
        rows.append((case, results))
        if case == "case9241pegase" and not args.quick:
            memory = gridtwin_memory(net)
        if len(net.line) and build_info()["cython_available"]:
            kinds: list[tuple[str, int, Callable, Callable, object]] = []
            line = _toggle_line(net)
            if line is not None:
                kinds.append(("line", line, run_toggle_gridtwin, run_toggle_ls2g, net))
            sw = _toggle_switch(net) if len(net.switch) else None
            if sw is not None:
                sw_fns = (run_toggle_switch_gridtwin, run_toggle_switch_ls2g)
                kinds.append(("switch", sw, *sw_fns, net))
            elif len(net.switch) and (net.switch.et == "l").any():
                # a radial grid islands on every switch: the meshed variant (every line switch
                # closed) gives a switch that patches
                meshed = copy.deepcopy(net)
                meshed.switch.loc[meshed.switch.et == "l", "closed"] = True
                sw = _toggle_switch(meshed)
                if sw is not None:
                    kinds.append(("switch(meshed)", sw, run_toggle_switch_gridtwin,
                                  run_toggle_switch_ls2g, meshed))  # fmt: skip
            tap = _toggle_tap(net) if len(net.trafo) else None
            if tap is not None:
                kinds.append(("tap", tap, run_toggle_tap_gridtwin, run_toggle_tap_ls2g, net))
            # a bus-bus switch: the grid's own (cigre_lv: each feeds a feeder, opening cuts it
            # off), else a bus coupler added to a meshed grid (both halves stay supplied)
            bb_net = net if (net.switch.et == "b").any() else None
            if bb_net is None and case in ("ieee14", "ieee118", "case2869pegase"):
                bb_net = _with_coupler(net)
            bb = _toggle_bus_switch(bb_net) if bb_net is not None else None
            if bb is not None:
                what = "bus switch" if bb_net is net else "bus coupler"
                kinds.append((what, bb, run_toggle_switch_gridtwin, run_toggle_bus_switch_ls2g,
                              bb_net))  # fmt: skip
            for what, element, fn_gt, fn_ls, on_net in kinds:
                cell: dict[str, tuple[float, float] | str] = {}
                for name, fn in (("gridtwin", fn_gt), ("ls2g", fn_ls)):
                    try:
                        times, iters = fn(on_net, element, args.toggle_steps)
                        cell[name] = (statistics.median(times) * 1e3, statistics.mean(iters))
                    except Exception as exc:
                        cell[name] = f"failed: {type(exc).__name__}: {exc}"[:60]
                    print(f"# {case:16s} toggle {what} {element} {name:10s} {cell[name]}",
                          file=sys.stderr, flush=True)  # fmt: skip
                toggles.append((case, f"{what} {element}", cell))
        if case in n1_cases and build_info()["cython_available"]:
            els = in_service_branches(net, args.n1_max)
            cell2: dict[str, str] = {}
            rates: dict[int, list[float]] = {}
            for th in args.threads:
                for name, fn in (("gridtwin", run_n1_gridtwin), ("ls2g", _n1_ls2g_solve_only)):
                    try:
                        rate, conv = fn(net, els, th)
                        cell2[f"{name} {th}t"] = f"{rate:.0f}/s ({conv} conv)"
                    except Exception as exc:
                        cell2[f"{name} {th}t"] = f"failed: {type(exc).__name__}: {exc}"[:60]
                    print(f"# {case:16s} N-1 {name} {th}t {cell2[f'{name} {th}t']}",
                          file=sys.stderr, flush=True)  # fmt: skip
                rates[th] = [
                    float(cell2[f"{n} {th}t"].split("/")[0])
                    if "/s" in cell2[f"{n} {th}t"]
                    else float("nan")
                    for n in ("gridtwin", "ls2g")
                ]
                cell2[f"ratio {th}t"] = f"x{rates[th][0] / rates[th][1]:.2f}"
            try:
                rate, _, _ = run_n1_pandapower(net, els[: args.n1_pp])
                cell2["pandapower"] = f"{rate:.1f}/s ({min(args.n1_pp, len(els))} cases)"
            except Exception as exc:
                cell2["pandapower"] = f"failed: {type(exc).__name__}: {exc}"[:60]
            n1.append((case, len(els), cell2))

    for case in toggle_only if build_info()["cython_available"] else []:
        # the large grid for the line toggle, without its injection steps
        net = grids.load(case)
        net["_ppc"] = None
        line = _toggle_line(net)
        if line is None:
            continue
        cell = {}
        for name, fn in (("gridtwin", run_toggle_gridtwin), ("ls2g", run_toggle_ls2g)):
            try:
                times, iters = fn(net, line, args.toggle_steps)
                cell[name] = (statistics.median(times) * 1e3, statistics.mean(iters))
            except Exception as exc:
                cell[name] = f"failed: {type(exc).__name__}: {exc}"[:60]
            print(f"# {case:16s} toggle line {line} {name:10s} {cell[name]}",
                  file=sys.stderr, flush=True)  # fmt: skip
        toggles.append((case, f"line {line}", cell))

    print("\n" + kernel_line)
    load = os.getloadavg()
    print(f"Load average at the end (1, 5, 15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs; the table is only as quiet as the machine.")  # fmt: skip
    print(f"Tolerance {TOL:g} pu on sn_mva for every method (lightsim2grid given tol * sn_mva).")
    print("\nInjection steps: median ms per step (mean NR iterations); "
          "ratio = method time / gridtwin cython (same column kind)\n")  # fmt: skip
    labels = [c[0] for c in cols]
    print("| grid | " + " | ".join(labels) + " |")
    print("|" + "---|" * (len(labels) + 1))
    for case, results in rows:
        cells = []
        for label, _m, with_res in cols:
            base = results.get("gridtwin_cython +results" if with_res else "gridtwin_cython")
            cells.append(_cell(results.get(label), base))
        print(f"| {case} | " + " | ".join(cells) + " |")
    if memory is not None:
        print(
            f"\ncase9241pegase GridModel (cython): tracemalloc peak while compiling "
            f"{memory[0]:.1f} MB; compiled arrays {memory[1]:.1f} MB"
        )
    if toggles:
        print(
            "\nTopology toggle + solve, median ms per toggle: a line out / in (lightsim2grid "
            "deactivate / reactivate), a line switch open / closed (lightsim2grid: that line "
            "end), a tap up / down (lightsim2grid change_ratio_trafo), a bus-bus switch open / "
            "closed (the grid's own, or a bus coupler splitting one bus; lightsim2grid: the "
            "second bus's elements moved with change_bus_*)\n"
        )
        print("| grid | toggle | gridtwin | lightsim2grid | gridtwin / lightsim2grid |")
        print("|---|---|---|---|---|")
        for case, line, cell in toggles:
            g, ls = cell.get("gridtwin"), cell.get("ls2g")
            ratio = (f"{g[0] / ls[0]:.2f}" if isinstance(g, tuple) and isinstance(ls, tuple)
                     else "-")  # fmt: skip
            print(f"| {case} | {line} | {_cell(g, None)} | {_cell(ls, None)} | {ratio} |")
    if n1:
        keys = [f"{n} {t}t" for t in args.threads for n in ("gridtwin", "ls2g", "ratio")]
        keys.append("pandapower")
        print(
            "\nN-1 over in-service lines and trafos: cases per second (converged cases); "
            "ratio = gridtwin / lightsim2grid ContingencyAnalysisCPP, same threads\n"
        )
        print("| grid | outages | " + " | ".join(keys) + " |")
        print("|" + "---|" * (len(keys) + 2))
        for case, count, cell2 in n1:
            print(f"| {case} | {count} | " + " | ".join(cell2.get(k, "-") for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
