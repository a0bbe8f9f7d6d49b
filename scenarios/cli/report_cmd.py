"""``gridtwin report RUN_DIR``: (re)build a results folder's report.html (a sweep output
folder gets the sweep report, scenarios.sweep_report).

Exit code 0: written; 2: not a results folder (or the report could not be drawn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="(re)build report.html of a results folder",
        description="Build report.html (self-contained: plots embedded, opens offline) from a "
        "results folder alone (of `gridtwin run`, or of `gridtwin sweep`: the ranking and "
        "spread of its cases). Exit code 0: written; 2: not a results folder.",
    )
    p.add_argument(
        "run_dir", type=Path, help="results folder of `gridtwin run` or `gridtwin sweep`"
    )
    p.add_argument("--out", type=Path, help="write here instead of RUN_DIR/report.html")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    import time

    from scenarios.report import write_report
    from scenarios.sweep_report import is_sweep_folder, write_sweep_report

    t0 = time.perf_counter()
    write = write_sweep_report if is_sweep_folder(args.run_dir) else write_report
    path = write(args.run_dir, args.out)
    size = path.stat().st_size
    print(f"report: {path} ({size / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s)")
    return 0


def write_run_report(run_dir: Path) -> Path | None:
    """The report at the end of ``gridtwin run``: an error is a message, never an exit code."""
    try:
        from scenarios.report import write_report

        return write_report(run_dir)
    except Exception as exc:  # the checks decide the exit code, not the report
        print(f"gridtwin: report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
