"""Sweep benchmark: N-1 on Dask vs lightsim2grid vs pandapower, and a scenario Monte Carlo.

1. N-1 over every in-service line and trafo of ``--grid`` (case2869pegase), steady state, the
   same cases for each method, cases per second including the gathering of results:
   - gridtwin ``gridtwin sweep`` (scenarios.sweep.run_sweep, ``run = "steady"``) on a LocalCluster
     of ``--workers`` processes (one thread each): chunks of cases in the kernel's batch
     (twin.n_minus_1) on a model each worker compiles once; per-chunk Parquet files, then
     results.parquet and summary.json. "cold" includes each worker's model build (the first
     sweep), "warm" is a second sweep on the same cluster (models cached in the workers).
     LocalCluster start-up is not included (reported separately).
   - lightsim2grid ``ContingencyAnalysisCPP`` on ``--workers`` threads: compute + compute_flows.
   - pandapower ``pandapower.contingency.run_contingency`` (lightsim2grid off): one runpp per
     case, so only ``--pp-cases`` cases (the rate is per case, comparable).
2. Monte Carlo of a city_day-style scenario (``--scenario``, seeds seed..seed+N-1, hardware as the
   file says: the embedded emulator), ``--cases`` cases, on 1 and on 2 workers: cases per minute.

    PYTHONPATH=. python bench/sweep.py [--quick] [--grid case2869pegase] [--workers 2]
                                       [--n1-max N] [--pp-cases 20] [--cases 4] [--duration 24h]

The CPU is shared on a busy machine: take numbers on an idle one.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:  # the installed gridtwin first; the source tree only when nothing is installed
    import twin  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOL = 1e-8  # per unit on sn_mva (pandapower's default tolerance_mva, gridtwin's default)
ROOT = Path(__file__).resolve().parents[1]

N1_SCENARIO = """
name = "bench_n1"
grid = "{grid}"
hardware = "none"
duration = "1min"
step = "1min"
[[check]]
kind = "converged"
[[check]]
kind = "voltage_band"
min_pu = 0.9
max_pu = 1.1
[[check]]
kind = "line_loading"
max_percent = 100
[sweep]
run = "steady"
n-1 = {n1}
chunk = {chunk}
"""


def _elements(net, limit: int | None) -> list[tuple[str, int]]:
    els = [("line", int(i)) for i in net.line.index[net.line.in_service]]
    els += [("trafo", int(i)) for i in net.trafo.index[net.trafo.in_service]]
    return els[:limit] if limit else els


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        scheduler_port=0,
    )
    client = Client(cluster)
    client.wait_for_workers(workers)
    client.run(_warm_up)  # imports (pandapower ~2 s) are start-up, not sweep time
    return client, cluster, time.perf_counter() - t0


def _warm_up() -> None:
    import pandapower  # noqa: F401

    import scenarios.engine  # noqa: F401
    import scenarios.sweep  # noqa: F401


def run_n1_dask(grid: str, labels: list[str], workers: int, chunk: int, tmp: Path) -> dict:
    from scenarios.sweep import load_sweep, run_sweep

    n1 = "[" + ", ".join(f'"{x}"' for x in labels) + "]"
    f = tmp / "n1.toml"
    f.write_text(N1_SCENARIO.format(grid=grid, n1=n1, chunk=chunk), encoding="utf-8")
    sc, spec = load_sweep(f)
    client, cluster, start_s = _cluster(workers)
    try:
        out = {}
        for run in ("cold", "warm"):
            shutil.rmtree(tmp / run, ignore_errors=True)
            t0 = time.perf_counter()
            res = run_sweep(sc, spec, tmp / run, client=client)
            dt = time.perf_counter() - t0
            out[run] = (len(res.table) / dt, int(res.table["converged"].sum()))
            out[run + "_table"] = res.table
        out["start_s"] = start_s
        return out
    finally:
        client.close()
        cluster.close()


def _v_start(net) -> np.ndarray:
    import pandapower as pp

    n = copy.deepcopy(net)
    pp.runpp(n, lightsim2grid=False, tolerance_mva=TOL)
    v = n.res_bus.vm_pu.to_numpy() * np.exp(1j * np.deg2rad(n.res_bus.va_degree.to_numpy()))
    return v.astype(complex)


def run_n1_ls2g(net, elements, threads: int) -> tuple[float, int]:
    """Same workload as bench/loadflow.py's N-1 table: compute + compute_flows."""
    from lightsim2grid.contingencyAnalysis import ContingencyAnalysisCPP
    from lightsim2grid.network import init_from_pandapower

    net = copy.deepcopy(net)
    net["_ppc"] = None
    v = _v_start(net)
    model = init_from_pandapower(net)
    tol = TOL * net.sn_mva
    v0 = model.ac_pf(v, 10, tol)
    nline = len(net.line)
    ids = [
        int(net.line.index.get_loc(i)) if t == "line" else nline + int(net.trafo.index.get_loc(i))
        for t, i in elements
    ]
    ca = ContingencyAnalysisCPP(model)
    ca.nb_thread = threads
    ca.add_multiple_n1(ids)
    t0 = time.perf_counter()
    ca.compute(v0, 10, tol)
    ca.compute_flows()
    volts = np.asarray(ca.get_voltages())
    flows = np.asarray(ca.get_flows())  # gathering the results is part of the rate
    dt = time.perf_counter() - t0
    conv = int(np.sum(np.abs(volts).sum(axis=1) > 0)) if volts.size else 0
    del flows
    return len(ids) / dt, conv


def run_n1_pandapower(net, elements) -> tuple[float, int]:
    from pandapower.contingency import run_contingency

    net = copy.deepcopy(net)
    net["_ppc"] = None
    cases: dict[str, dict[str, list[int]]] = {}
    for t, i in elements:
        cases.setdefault(t, {"index": []})["index"].append(i)
    t0 = time.perf_counter()
    run_contingency(net, cases, lightsim2grid=False, tolerance_mva=TOL)
    dt = time.perf_counter() - t0
    return len(elements) / dt, len(elements)


def run_mc(scenario: Path, cases: int, workers: int, duration: str | None, tmp: Path) -> dict:
    from scenarios.sweep import SweepSpec, load_sweep, plan_cases, run_sweep
    from scenarios.timeparse import parse_duration

    sc, _ = load_sweep(scenario)
    if duration:
        sc = dataclasses.replace(sc, duration=parse_duration(duration))
    spec = SweepSpec(run="scenario", seeds=cases, chunk=1, retries=1)
    client, cluster, start_s = _cluster(workers)
    try:
        out = tmp / f"mc{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = run_sweep(sc, spec, out, client=client, cases=plan_cases(sc, spec))
        dt = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    return {
        "per_min": len(res.table) / dt * 60.0,
        "errors": int((res.table["error"] != "").sum()),
        "passed": int(res.table["passed"].sum()),
        "wall_s": dt,
        "start_s": start_s,
        "steps": int(res.table["steps"].iloc[0]) if len(res.table) else 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a correctness run: 200 outages, 5 pandapower cases, 2 MC cases of 1 h",
    )
    ap.add_argument("--grid", default="case2869pegase")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers / lightsim2grid threads")
    ap.add_argument("--n1-max", type=int, default=None, help="at most this many outages")
    ap.add_argument("--chunk", type=int, default=0, help="cases per Dask task (0: automatic)")
    ap.add_argument("--pp-cases", type=int, default=20, help="outages for pandapower's module")
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios/library/city_day.toml")
    ap.add_argument("--cases", type=int, default=4, help="Monte Carlo scenario cases (seeds)")
    ap.add_argument("--duration", default=None, help="shorten each scenario (e.g. 2h)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["n1", "pp", "ls2g", "mc"])
    args = ap.parse_args(argv)
    if args.quick:
        args.n1_max = args.n1_max or 200
        args.pp_cases = min(args.pp_cases, 5)
        args.cases = min(args.cases, 2)
        args.duration = args.duration or "1h"

    import grids
    from scenarios.profiles import element_labels

    net = grids.load(args.grid)
    elements = _elements(net, args.n1_max)
    lab = {t: {i: x for x, i in element_labels(net, t).items()} for t in ("line", "trafo")}
    labels = [lab[t][i] for t, i in elements]
    tmp = Path(tempfile.mkdtemp(prefix="gridtwin-bench-sweep-"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        if "n1" not in args.skip:
            print(f"N-1 on {args.grid}: {len(elements)} outages (lines + trafos in service)")
            d = run_n1_dask(args.grid, labels, args.workers, args.chunk, tmp)
            base = d["warm"][0]
            w = args.workers
            rows.append(
                (
                    f"gridtwin sweep, Dask {w} workers, warm",
                    f"{d['warm'][0]:.1f}",
                    str(d["warm"][1]),
                    "1.00",
                )
            )
            rows.append(
                (
                    f"gridtwin sweep, Dask {w} workers, cold (model builds)",
                    f"{d['cold'][0]:.1f}",
                    str(d["cold"][1]),
                    f"{d['cold'][0] / base:.2f}",
                )
            )
            if "ls2g" not in args.skip:
                r = run_n1_ls2g(net, elements, args.workers)
                rows.append(
                    (
                        f"lightsim2grid ContingencyAnalysisCPP, {w} threads",
                        f"{r[0]:.1f}",
                        str(r[1]),
                        f"{r[0] / base:.2f}",
                    )
                )
            if "pp" not in args.skip and args.pp_cases > 0:
                sub = elements[: args.pp_cases]
                r = run_n1_pandapower(net, sub)
                rows.append(
                    (
                        f"pandapower.contingency (first {len(sub)} cases only)",
                        f"{r[0]:.2f}",
                        str(r[1]),
                        f"{r[0] / base:.3f}",
                    )
                )
            print(f"(LocalCluster start-up, not counted: {d['start_s']:.1f} s)\n")
            print("| method | cases/s | converged | ratio to gridtwin warm |")
            print("|---|---|---|---|")
            for r4 in rows:
                print("| " + " | ".join(r4) + " |")
            print()
        if "mc" not in args.skip:
            dur = args.duration or "the file's duration"
            print(f"Monte Carlo: {args.cases} cases of {args.scenario.name} ({dur}), seeds")
            one = run_mc(args.scenario, args.cases, 1, args.duration, tmp)
            two = run_mc(args.scenario, args.cases, 2, args.duration, tmp)
            print("| workers | cases/min | wall s | steps/case | passed | errors | scaling |")
            print("|---|---|---|---|---|---|---|")
            for n, r in ((1, one), (2, two)):
                print(
                    f"| {n} | {r['per_min']:.2f} | {r['wall_s']:.1f} | {r['steps']} | "
                    f"{r['passed']} | {r['errors']} | {r['per_min'] / one['per_min']:.2f} |"
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nshared CPU: numbers from a busy machine are not final; run on an idle one.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
