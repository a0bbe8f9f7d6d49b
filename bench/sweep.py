"""Sweep benchmark: N-1 on Dask vs lightsim2grid vs pandapower, and a scenario Monte Carlo.

1. N-1 over every in-service line and trafo of ``--grid`` (case2869pegase), steady state, the
   same cases for each method, cases per second including the gathering of results:
   - gridtwin ``gridtwin sweep`` (scenarios.sweep.run_sweep, ``run = "steady"``) on a LocalCluster
     of ``--workers`` processes (one thread each, scenarios.sweep.make_client): chunks of cases
     in the kernel's batch (twin.n_minus_1) on a model each worker compiles once; per-chunk
     Parquet files, then results.parquet and summary.json (the gathering). "cold" includes each
     worker's model build (the first sweep), "warm" is a second sweep on the same cluster (models
     cached in the workers). Cluster start-up and imports are not counted (printed apart).
   - lightsim2grid ``ContingencyAnalysisCPP`` on ``--workers`` threads: compute + compute_flows
     + reading voltages and flows back (bench/_common.py).
   - pandapower ``pandapower.contingency.run_contingency`` (lightsim2grid off): one runpp per
     case, so only the first ``--pp-cases`` cases; the time for all cases is an extrapolation
     from that rate and is labelled so.
2. Monte Carlo of a city_day-style scenario (``--scenario``: its grid, profiles, emulated
   substation and checks, shortened to ``--duration``; seeds seed..seed+N-1), ``--cases`` cases
   on 1 and on 2 workers: cases per minute and the scaling ratio (target >= 1.7). Each worker
   is warmed first (imports, the grid, one 2-step case: not counted); one case per task.

    PYTHONPATH=. python bench/sweep.py [--quick] [--grid case2869pegase] [--workers 2]
                                       [--n1-max N] [--pp-cases 20] [--cases 200]
                                       [--duration 2h] [--skip n1 pp ls2g mc]

``--quick`` is a correctness run (200 outages, 5 pandapower cases, 6 Monte Carlo cases of
20 min). The header prints the load average: numbers from a shared machine are not final.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

try:  # the installed gridtwin first; the source tree only when nothing is installed
    import twin  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py beside this file

from _common import (  # noqa: E402
    in_service_branches,
    machine_line,
    run_n1_ls2g,
    run_n1_pandapower,
)

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


def _cluster(workers: int, sc):
    """A LocalCluster as `gridtwin sweep` makes it, each worker warmed (not timed)."""
    from scenarios.cli.sweep_cmd import _quiet_worker
    from scenarios.sweep import make_client, warm_worker

    t0 = time.perf_counter()
    client = make_client(workers=workers)
    client.wait_for_workers(workers)
    client.run(warm_worker, sc, _quiet_worker)  # imports (pandapower ~2 s) and the grid
    return client, time.perf_counter() - t0


def _close(client) -> None:
    cluster = client.cluster
    client.close()
    cluster.close()


def run_n1_dask(grid: str, labels: list[str], workers: int, chunk: int, tmp: Path) -> dict:
    from scenarios.sweep import load_sweep, run_sweep

    n1 = "[" + ", ".join(f'"{x}"' for x in labels) + "]"
    f = tmp / "n1.toml"
    f.write_text(N1_SCENARIO.format(grid=grid, n1=n1, chunk=chunk), encoding="utf-8")
    sc, spec = load_sweep(f)
    client, start_s = _cluster(workers, sc)
    try:
        out: dict = {"start_s": start_s}
        for run in ("cold", "warm"):
            shutil.rmtree(tmp / run, ignore_errors=True)
            t0 = time.perf_counter()
            res = run_sweep(sc, spec, tmp / run, client=client)  # gathered: parquet + summary
            dt = time.perf_counter() - t0
            out[run] = (len(res.table) / dt, int(res.table["converged"].sum()))
        return out
    finally:
        _close(client)


def _mc_scenario(path: Path, duration: str | None):
    """The scenario shortened to ``duration``; checks whose window or time lies after it
    dropped (city_day's ring check at 23:00)."""
    from scenarios.sweep import load_sweep
    from scenarios.timeparse import parse_duration

    sc, _ = load_sweep(path)
    if duration:
        d = parse_duration(duration)
        checks = tuple(c for c in sc.checks if c.window[0] <= d and (c.param("at") or 0.0) <= d)
        sc = dataclasses.replace(sc, duration=d, checks=checks)
    return sc


def run_mc(sc, cases: int, workers: int, tmp: Path) -> dict:
    from scenarios.sweep import Case, SweepSpec, plan_cases, run_chunk, run_sweep

    spec = SweepSpec(run="scenario", seeds=cases, chunk=1, retries=1)
    client, start_s = _cluster(workers, sc)
    try:
        # one 2-step case on every worker first: the field's imports and first build, not timed
        short = dataclasses.replace(sc, duration=2 * sc.step, checks=())
        warm = {"scenario": short, "spec": spec, "cases": [Case("warm")], "root": None}
        futures = [
            client.submit(run_chunk, warm, workers=[a], allow_other_workers=False, pure=False)
            for a in client.scheduler_info()["workers"]
        ]  # a task on each worker (client.run would run it inside the worker's event loop)
        for f in futures:
            r = f.result()["table"]
            if (r["error"] != "").any():
                raise RuntimeError(f"the warm-up case failed: {r['error'].iloc[0]}")
        out = tmp / f"mc{workers}"
        shutil.rmtree(out, ignore_errors=True)
        todo = plan_cases(sc, spec)
        c0 = _tree_cpu()
        t0 = time.perf_counter()
        res = run_sweep(sc, spec, out, client=client, cases=todo)
        dt = time.perf_counter() - t0
        c1 = _tree_cpu()
    finally:
        _close(client)
    t = res.table
    n = max(len(t), 1)
    return {
        # CPU seconds per case of every process of the sweep (this client with the scheduler,
        # the nannies, the workers): load on the machine does not inflate it much, unlike
        # cases/min; "client" is this process alone (scheduler, gathering, chunk files)
        "all_cpu_s": (c1[0] - c0[0]) / n,
        "client_cpu_s": (c1[1] - c0[1]) / n,
        "per_min": len(t) / dt * 60.0,
        "errors": int((t["error"] != "").sum()),
        "passed": int(t["passed"].sum()),
        "wall_s": dt,
        "start_s": start_s,
        "steps": int(t["steps"].iloc[0]) if len(t) and "steps" in t else 0,
        "case_s": float(t["wall_s"].median()) if len(t) else float("nan"),
        "cpu_s": float(t["cpu_s"].median()) if len(t) and "cpu_s" in t else float("nan"),
        "workers": int(t["worker"].nunique()),
    }


def _tree_cpu() -> tuple[float, float]:
    """(CPU s of this process and all its live children, CPU s of this process alone)."""
    import psutil

    me = psutil.Process()
    own = sum(me.cpu_times()[:2])
    total = own
    for p in me.children(recursive=True):
        try:
            total += sum(p.cpu_times()[:2])
        except psutil.Error:  # gone meanwhile
            pass
    return total, own


def quiet_ratio(one: dict, two: dict) -> float:
    """The 1 -> 2 worker scaling that two idle cores would give these CPU figures: one
    worker runs at its own CPU per case (the rest of the sweep has the other core); two
    workers can go no faster than two cases per worker-CPU-per-case, nor than two cores
    divided by all the sweep's CPU per case."""
    w1 = one["cpu_s"]
    w2, all2 = two["cpu_s"], two["all_cpu_s"]
    return min(2.0 / w2, 2.0 / all2) * w1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a correctness run: 200 outages, 5 pandapower cases, 6 MC cases of 20 min",
    )
    ap.add_argument("--grid", default="case2869pegase")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers / lightsim2grid threads")
    ap.add_argument("--n1-max", type=int, default=None, help="at most this many outages")
    ap.add_argument("--chunk", type=int, default=0, help="cases per Dask task (0: automatic)")
    ap.add_argument("--pp-cases", type=int, default=20, help="outages for pandapower's module")
    ap.add_argument("--scenario", type=Path, default=ROOT / "scenarios/library/city_day.toml")
    ap.add_argument("--cases", type=int, default=200, help="Monte Carlo scenario cases (seeds)")
    ap.add_argument(
        "--duration",
        default="2h",
        help="each Monte Carlo case's duration (default 2h: 121 steps; '' for the file's 24 h, "
        "about 1 min a case)",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["n1", "pp", "ls2g", "mc"])
    args = ap.parse_args(argv)
    if args.quick:
        args.n1_max = args.n1_max or 200
        args.pp_cases = min(args.pp_cases, 5)
        args.cases = min(args.cases, 6)
        args.duration = "20min" if args.duration == "2h" else args.duration
    import warnings

    warnings.filterwarnings("ignore")
    import grids
    from scenarios.cli import _quiet_third_party
    from scenarios.profiles import element_labels

    _quiet_third_party()
    print(f"# {machine_line()}")
    print(f"# {'--quick: a correctness run, not a measurement' if args.quick else 'full run'}\n")
    net = grids.load(args.grid)
    every = in_service_branches(net)
    elements = every[: args.n1_max] if args.n1_max else every
    lab = {t: {i: x for x, i in element_labels(net, t).items()} for t in ("line", "trafo")}
    labels = [lab[t][i] for t, i in elements]
    tmp = Path(tempfile.mkdtemp(prefix="gridtwin-bench-sweep-"))
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    try:
        if "n1" not in args.skip:
            w = args.workers
            print(f"N-1 on {args.grid}: {len(elements)} of {len(every)} in-service lines + trafos")
            d = run_n1_dask(args.grid, labels, w, args.chunk, tmp)
            base = d["warm"][0]
            rows.append((f"gridtwin sweep, Dask {w} workers, warm", f"{base:.1f}",
                         str(d["warm"][1]), "1.00"))  # fmt: skip
            rows.append((f"gridtwin sweep, Dask {w} workers, cold (model builds)",
                         f"{d['cold'][0]:.1f}", str(d["cold"][1]),
                         f"{d['cold'][0] / base:.2f}"))  # fmt: skip
            if "ls2g" not in args.skip:
                r = run_n1_ls2g(net, elements, w)
                rows.append((f"lightsim2grid ContingencyAnalysisCPP, {w} threads", f"{r[0]:.1f}",
                             str(r[1]), f"{r[0] / base:.2f}"))  # fmt: skip
            if "pp" not in args.skip and args.pp_cases > 0:
                sub = elements[: args.pp_cases]
                rate, n, secs = run_n1_pandapower(net, sub)
                rows.append((f"pandapower.contingency, 1 process (first {n} cases only)",
                             f"{rate:.2f}", f"{n} (not read)", f"{rate / base:.3f}"))  # fmt: skip
                notes.append(
                    f"pandapower: {n} cases took {secs:.1f} s; EXTRAPOLATED at that rate, all "
                    f"{len(elements)} cases would take about {len(elements) / rate / 60:.1f} min "
                    f"(gridtwin warm: {len(elements) / base:.1f} s)"
                )
            print(f"(LocalCluster start-up + warm-up, not counted: {d['start_s']:.1f} s)\n")
            print("| method | cases/s | converged | ratio to gridtwin warm |")
            print("|---|---|---|---|")
            for r4 in rows:
                print("| " + " | ".join(r4) + " |")
            for note in notes:
                print(f"\n{note}")
            print()
        if "mc" not in args.skip:
            sc = _mc_scenario(args.scenario, args.duration or None)
            print(f"Monte Carlo: {args.cases} cases (seeds) of {args.scenario.name} on "
                  f"{sc.grid}, {sc.duration / 60:g} min each ({sc.steps} steps), hardware "
                  f"{sc.hardware}")  # fmt: skip
            one = run_mc(sc, args.cases, 1, tmp)
            two = run_mc(sc, args.cases, 2, tmp)
            print("| workers | cases/min | wall s | s/case (median) | worker CPU s/case (median) "
                  "| all processes CPU s/case | client CPU s/case | workers used | passed | "
                  "errors | scaling |")  # fmt: skip
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for n, r in ((1, one), (2, two)):
                print(
                    f"| {n} | {r['per_min']:.2f} | {r['wall_s']:.1f} | {r['case_s']:.2f} | "
                    f"{r['cpu_s']:.3f} | {r['all_cpu_s']:.3f} | {r['client_cpu_s']:.3f} | "
                    f"{r['workers']} | {r['passed']} | {r['errors']} | "
                    f"{r['per_min'] / one['per_min']:.2f} |"
                )
            ratio = two["per_min"] / one["per_min"]
            verdict = "met" if ratio >= 1.7 else "NOT met"
            print(f"\nscaling 1 -> 2 workers: {ratio:.2f}x (target >= 1.7x: {verdict})")
            print(
                f"from CPU seconds alone (what two idle cores would give): "
                f"{quiet_ratio(one, two):.2f}x"
            )
            print(
                "a case's wall time well above its CPU time means it waited for a core: the "
                "machine was busy (each worker runs one thread; OMP/MKL/OPENBLAS_NUM_THREADS=1)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n# {machine_line()}")
    print("# shared CPU: numbers from a busy machine are not final; run on an idle one.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
