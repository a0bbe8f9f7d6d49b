"""Load-flow benchmark: the same workload for every method, one process, a markdown table.

Workload per grid: consecutive solves, each after scaling every load (P and Q) by a seeded random
factor in 0.7-1.3 (one factor per load and step). Times include applying the new loads.

    python bench/loadflow.py [--cases ieee14 ieee118 ...] [--steps 1000] [--pegase-steps 200]
                             [--pp-steps 50] [--methods ...]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_CASES = [
    "ieee14", "ieee118", "mv_oberrhein", "case1354pegase", "case2869pegase", "case9241pegase",
    "urban_district",
]  # fmt: skip
METHODS = ["pp_runpp", "pp_recycle", "ls2g_step", "ls2g_batch", "gridtwin_cython", "gridtwin_numpy"]
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
    kwargs = {"lightsim2grid": False}
    if recycle:
        pp.runpp(net, **kwargs)  # the recycle mode needs one full run first
        kwargs["recycle"] = {"bus_pq": True, "trafo": False, "gen": False}

    def step(k: int) -> int:
        net.load["p_mw"] = p0 * fac[k]
        net.load["q_mvar"] = q0 * fac[k]
        pp.runpp(net, **kwargs)
        return int(net._ppc["iterations"])

    return _time_steps(step, fac.shape[0])


def _v_start(net) -> np.ndarray:
    """A converged pandapower state as lightsim2grid's start (flat fails on several grids)."""
    import pandapower as pp

    ref = copy.deepcopy(net)
    ref["_ppc"] = None
    pp.runpp(ref, lightsim2grid=False)
    vm = np.nan_to_num(ref.res_bus.vm_pu.to_numpy(float), nan=1.0)
    va = np.deg2rad(np.nan_to_num(ref.res_bus.va_degree.to_numpy(float), nan=0.0))
    return vm * np.exp(1j * va)


def run_ls2g_step(net, fac):
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    p0 = net.load.p_mw.to_numpy(float)
    q0 = net.load.q_mvar.to_numpy(float)
    first = model.ac_pf(_v_start(net), 10, 1e-8)
    if first.shape[0] == 0:
        raise RuntimeError("lightsim2grid did not converge on the base case")
    state = {"v": first}
    mask = np.ones(len(p0), dtype=bool)

    def step(k: int) -> int:
        model.update_loads_p(mask, (p0 * fac[k]).astype(np.float32))
        model.update_loads_q(mask, (q0 * fac[k]).astype(np.float32))
        v = model.ac_pf(state["v"], 10, 1e-8)
        if v.shape[0] == 0:
            raise RuntimeError(f"lightsim2grid did not converge at step {k}")
        state["v"] = v
        return int(model.get_solver().get_nb_iter())

    return _time_steps(step, fac.shape[0])


def run_ls2g_batch(net, fac):
    from lightsim2grid.lightsim2grid_cpp import TimeSeriesCPP
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    model = init_from_pandapower(net)
    v0 = model.ac_pf(_v_start(net), 10, 1e-8)
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
    status = ts.compute_Vs(gen_p, sgen_p, load_p, load_q, v0, 10, 1e-8)
    total = time.perf_counter() - t0
    if status != 1:
        raise RuntimeError(f"TimeSeriesCPP status {status}")
    try:
        iters = [int(x) for x in np.asarray(ts.get_row_nb_iter()).ravel()]
    except Exception:  # older builds have no per-row iteration counts
        iters = []
    return [total / steps] * steps, iters


def run_gridtwin(net, fac, backend: str):
    from twin.model import GridModel

    net = copy.deepcopy(net)
    model = GridModel(net, backend=backend)
    model.solve()
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()

    def step(k: int) -> int:
        model.update("load", "p_mw", p0 * fac[k])
        model.update("load", "q_mvar", q0 * fac[k])
        return model.solve().iterations

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES)
    parser.add_argument("--steps", type=int, default=1000, help="steps per non-pegase grid")
    parser.add_argument("--pegase-steps", type=int, default=200, help="steps per pegase grid")
    parser.add_argument("--pp-steps", type=int, default=50, help="steps for pandapower methods")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import grids

    rows = []
    memory = None
    for case in args.cases:
        net = grids.load(case)
        net["_ppc"] = None
        steps = args.pegase_steps if "pegase" in case else args.steps
        results: dict[str, tuple[float, float] | str] = {}
        for method in args.methods:
            n = min(steps, args.pp_steps) if method in SLOW else steps
            fac = _factors(args.seed, n, len(net.load))
            try:
                if method == "pp_runpp":
                    times, iters = run_pandapower(net, fac, recycle=False)
                elif method == "pp_recycle":
                    times, iters = run_pandapower(net, fac, recycle=True)
                elif method == "ls2g_step":
                    times, iters = run_ls2g_step(net, fac)
                elif method == "ls2g_batch":
                    times, iters = run_ls2g_batch(net, fac)
                else:
                    times, iters = run_gridtwin(net, fac, method.split("_")[1])
            except Exception as exc:  # a comparison method failing must not stop the table
                results[method] = f"failed: {type(exc).__name__}: {exc}"[:60]
                continue
            med = statistics.median(times) * 1e3
            it = statistics.mean(iters) if iters else float("nan")
            results[method] = (med, it)
            print(f"# {case:16s} {method:16s} {med:10.4f} ms  iters {it:.2f}  ({n} steps)",
                  file=sys.stderr, flush=True)  # fmt: skip
        rows.append((case, results))
        if case == "case9241pegase":
            memory = gridtwin_memory(net)

    print("\nMedian ms per solve (mean NR iterations); ratio = method time / gridtwin cython\n")
    header = "| grid | " + " | ".join(args.methods) + " |"
    print(header)
    print("|" + "---|" * (len(args.methods) + 1))
    for case, results in rows:
        base = results.get("gridtwin_cython")
        cells = []
        for m in args.methods:
            r = results.get(m)
            if isinstance(r, tuple):
                ratio = f", x{r[0] / base[0]:.1f}" if isinstance(base, tuple) else ""
                cells.append(f"{r[0]:.4g} ({r[1]:.1f} it{ratio})")
            else:
                cells.append(str(r))
        print(f"| {case} | " + " | ".join(cells) + " |")
    if memory is not None:
        print(
            f"\ncase9241pegase GridModel (cython): tracemalloc peak while compiling "
            f"{memory[0]:.1f} MB; compiled arrays {memory[1]:.1f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
