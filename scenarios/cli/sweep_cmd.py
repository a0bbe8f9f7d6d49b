"""``gridtwin sweep FILE``: many cases of a scenario on Dask (docs/sweep.md).

Exit code 0: every case passed; 1: a case failed or raised (all recorded in the results);
2: bad input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep (N-1, seeds, parameter grids) on Dask",
        description="Run every case of the scenario's [sweep] section on a Dask cluster (a "
        "LocalCluster on this machine by default) and gather the results into "
        "OUT/results.parquet and OUT/summary.json. Running again on the same OUT resumes: "
        "finished cases are skipped. Exit code 0: every case passed; 1: a case failed or "
        "raised; 2: bad input.",
    )
    p.add_argument("file", type=Path, help="scenario file (TOML) with a [sweep] section")
    p.add_argument("--run", choices=("scenario", "steady"), help="override sweep.run")
    p.add_argument(
        "--n-1",
        dest="n_1",
        metavar="SET",
        help='outages: "all", "lines", "trafos" or comma-separated labels',
    )
    p.add_argument("--seeds", type=int, help="override sweep.seeds")
    p.add_argument("--sigma", type=float, help="override sweep.sigma (steady Monte Carlo)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a parameter grid entry (repeatable; replaces the file's key)",
    )
    p.add_argument("--chunk", type=int, help="cases per Dask task (0: automatic)")
    p.add_argument("--retries", type=int, help="Dask retries per task")
    p.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="use this Dask scheduler (default: a LocalCluster on 127.0.0.1)",
    )
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: CPUs)")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default results/<name>-sweep); must be reachable by "
        "every worker for run folders with --scheduler",
    )
    p.add_argument("--keep-runs", action="store_true", help="keep each case's run folder")
    p.add_argument("--top", type=int, default=10, help="worst cases to print (default 10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace, spec, where: str):
    import dataclasses

    from scenarios.sweep import parse_sweep

    raw: dict = {
        "run": spec.run,
        "sigma": spec.sigma,
        "chunk": spec.chunk,
        "retries": spec.retries,
        "grid": {k: list(v) for k, v in spec.grid},
    }
    if spec.n_1 is not None:
        raw["n-1"] = spec.n_1 if isinstance(spec.n_1, str) else list(spec.n_1)
    if spec.seeds is not None:
        raw["seeds"] = spec.seeds
    for name, key in (
        ("run", "run"),
        ("seeds", "seeds"),
        ("sigma", "sigma"),
        ("chunk", "chunk"),
        ("retries", "retries"),
    ):
        v = getattr(args, name)
        if v is not None:
            raw[key] = v
    if args.n_1 is not None:
        raw["n-1"] = (
            args.n_1
            if args.n_1 in ("all", "lines", "trafos")
            else [s.strip() for s in args.n_1.split(",") if s.strip()]
        )
    for item in args.grid:
        key, sep, vals = item.partition("=")
        if not sep:
            from twin.errors import ConfigError

            raise ConfigError("--grid", key, f"expected KEY=V1,V2,..., found {item!r}")
        try:
            raw["grid"][key.strip()] = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            from twin.errors import ConfigError

            raise ConfigError(
                "--grid", key, f"expected numbers after '=', found {vals!r}"
            ) from None
    new = parse_sweep(raw, where + " (with command-line overrides)")
    return dataclasses.replace(new)


def _quiet_worker() -> None:
    """On the workers of our own LocalCluster: the CLI's quieting of third-party notices, and
    no per-case warnings on the terminal (tripped inverters, islanded buses: each case's
    events are in its results; hundreds of cases would flood the progress bar)."""
    from scenarios.cli import _quiet_third_party

    _quiet_third_party()
    logging.getLogger().setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> int:
    import distributed  # noqa: F401 - it sets up its own loggers on import; quiet them after
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from scenarios.sweep import load_sweep, plan_cases, run_sweep

    if not getattr(args, "verbose", 0):
        # its INFO lines and the nanny's "still alive after 4 s, killing" at shutdown
        logging.getLogger("distributed").setLevel(logging.ERROR)
    console = Console()
    sc, spec = load_sweep(args.file)
    spec = _overrides(args, spec, str(args.file))
    cases = plan_cases(sc, spec)
    out = args.out or Path("results") / f"{sc.name}-sweep"
    show = not args.no_progress and console.is_terminal
    console.print(f"{sc.name}: {len(cases)} cases ({spec.run}), results in {out}")
    if args.dry_run:
        for c in cases[: args.top]:
            what = [f"outage {c.outage[0]} {c.outage[1]}"] if c.outage else []
            what += [f"seed {c.seed}"] if c.seed is not None else []
            what += [f"{k}={v:g}" for k, v in c.params]
            console.print(f"  {c.id}: {', '.join(what) or 'the scenario as written'}")
        if len(cases) > args.top:
            console.print(f"  ... and {len(cases) - args.top} more")
        return 0
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cases"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    with progress:
        task = progress.add_task("sweep", total=len(cases))

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done)

        res = run_sweep(
            sc,
            spec,
            out,
            scheduler=args.scheduler,
            workers=args.workers,
            keep_runs=args.keep_runs,
            progress=tick,
            cases=cases,
            worker_setup=None if args.scheduler else _quiet_worker,
        )
    s = res.summary
    table = Table(
        title=f"worst cases of {s['cases']} ({s['passed']} passed, {s['failed']} "
        f"failed, {s['errors']} errors)"
    )
    for col in (
        "case",
        "outage",
        "seed",
        "params",
        "worst V pu",
        "worst loading %",
        "failed",
        "error",
    ):
        table.add_column(col, overflow="fold")
    for r in s["ranking"][: args.top]:
        params = ", ".join(
            f"{k[6:]}={v:g}" for k, v in r.items() if k.startswith("param.") and v is not None
        )
        vm, ld = r.get("worst_vm_pu"), r.get("worst_loading_percent")
        table.add_row(
            r["case"],
            r.get("outage") or "",
            "" if r.get("seed", -1) < 0 else str(r["seed"]),
            params,
            "" if vm is None else f"{vm:.4f} {r.get('worst_vm_bus') or ''}",
            "" if ld is None else f"{ld:.1f} {r.get('worst_loading_element') or ''}",
            str(r.get("failed_checks", "")),
            (r.get("error") or "")[:120],
        )
    console.print(table)
    for key, unit in (("worst_vm_pu", "pu"), ("worst_loading_percent", "%")):
        sp = s[key]
        if sp.get("min") is not None:
            console.print(
                f"{key} over cases: min {sp['min']:.4g}, p50 {sp['p50']:.4g}, "
                f"p95 {sp['p95']:.4g}, max {sp['max']:.4g} {unit}"
            )
    if res.skipped:
        console.print(f"resumed: {res.skipped} cases were already done in {out}")
    rate = f", {s['cases_per_s']} cases/s" if s.get("cases_per_s") else ""
    console.print(f"results: {out / 'results.parquet'}, summary: {out / 'summary.json'}{rate}")
    try:
        from scenarios.sweep_report import write_sweep_report

        console.print(f"report: {write_sweep_report(out)}")
    except Exception as exc:  # the cases decide the exit code, not the report
        print(f"gridtwin: report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 0 if s["failed"] == 0 else 1
