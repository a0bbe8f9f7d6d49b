"""``gridtwin compare RUN_A RUN_B`` and ``gridtwin baseline update NAME``.

compare exits 0 when the runs agree within tolerance, 1 when they do not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _duration(text: str) -> float:
    from scenarios.timeparse import parse_duration

    try:
        v = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, found {text!r}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {text!r}")
    return v


def add_tolerances(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vm-tol", type=_positive, default=1e-4, help="bus voltage (pu), 1e-4")
    p.add_argument("--loading-tol", type=_positive, default=0.1,
                   help="line/trafo loading (percentage points), 0.1")  # fmt: skip
    p.add_argument("--p-tol", type=_positive, default=1e-4,
                   help="load/sgen active power (MW), 1e-4")  # fmt: skip
    p.add_argument("--time-tol", type=_duration, default=1.0,
                   help='time shift allowed for events, states and values ("1s")')  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare two runs (results folders or baselines)",
        description="Compare two runs' time series, switch/tap states, events and check "
        "verdicts point by point, aligned on simulated time. Each run is a results folder of "
        "`gridtwin run` or a baseline folder (scenarios/baselines/<name>). Exit code 0: equal "
        "within tolerance; 1: different; 2: bad input.",
    )
    p.add_argument("run_a", type=Path, help="results folder or baseline")
    p.add_argument("run_b", type=Path, help="results folder or baseline")
    add_tolerances(p)
    p.add_argument("--top", type=int, default=20, help="differences to list (20)")
    p.set_defaults(func=compare)

    b = sub.add_parser(
        "baseline",
        help="refresh a bundled scenario's stored baseline",
        description="Baselines (scenarios/baselines/<name>/) are compact text records of a "
        "known-good run that CI holds every bundled scenario to.",
    )
    bsub = b.add_subparsers(dest="baseline_command", metavar="ACTION")
    u = bsub.add_parser(
        "update",
        help="run a bundled scenario and store its baseline",
        description="Run scenarios/library/NAME.toml and write scenarios/baselines/NAME/ from "
        "its results (or from --from RUN_DIR without running). Prints how the new baseline "
        "differs from the old one.",
    )
    u.add_argument("names", nargs="+", help="bundled scenario names (scenarios/library/*.toml)")
    u.add_argument("--from", dest="from_dir", type=Path, help="use this results folder")
    u.set_defaults(func=baseline_update)
    b.set_defaults(func=lambda a: (b.print_help(), 2)[1])


def compare(args: argparse.Namespace) -> int:
    from scenarios.compare import compare as run_compare
    from scenarios.compare import render

    cmp = run_compare(args.run_a, args.run_b, vm_tol=args.vm_tol,
                      loading_tol=args.loading_tol, time_tol=args.time_tol,
                      p_tol=args.p_tol)  # fmt: skip
    print(render(cmp, top=args.top))
    return 0 if cmp.equal else 1


def compare_to_baseline(run_dir: Path, baseline: Path, args: argparse.Namespace) -> bool:
    """``gridtwin run --baseline DIR``: print the comparison; True when equal."""
    from scenarios.compare import compare as run_compare
    from scenarios.compare import render

    cmp = run_compare(baseline, run_dir, vm_tol=args.vm_tol, loading_tol=args.loading_tol,
                      time_tol=args.time_tol, p_tol=args.p_tol)  # fmt: skip
    print(f"baseline {baseline} (A) vs this run (B):")
    print(render(cmp))
    return cmp.equal


def baseline_update(args: argparse.Namespace) -> int:
    from scenarios.compare import baseline_dir, compare, load_compact, render, write_baseline
    from scenarios.engine import run_scenario
    from twin.errors import ConfigError

    library = Path(__file__).resolve().parent.parent / "library"
    if args.from_dir is not None and len(args.names) != 1:
        raise ConfigError("baseline update", "--from", "expected one NAME with --from")
    for name in args.names:
        f = library / f"{name}.toml"
        if not f.is_file():
            known = ", ".join(sorted(p.stem for p in library.glob("*.toml")))
            raise ConfigError(str(f), "name", f"expected a bundled scenario ({known}), "
                              f"found no {name}.toml")  # fmt: skip
        dest = baseline_dir(name)
        old = load_compact(dest) if dest.is_dir() else None
        with tempfile.TemporaryDirectory(prefix=f"gridtwin-baseline-{name}-") as tmp:
            run = args.from_dir
            if run is None:
                run = Path(tmp) / name
                print(f"{name}: running {f} ...", flush=True)
                res = run_scenario(f, out_dir=run)
                if not res.passed:
                    print(f"{name}: the run did not pass its checks; baseline not written "
                          f"({res.error or 'a check failed'})", file=sys.stderr)  # fmt: skip
                    return 1
            new = load_compact(run)
            if old is not None:
                cmp = compare(old, new)
                print(f"{name}: old baseline (A) vs new run (B):\n{render(cmp, top=10)}")
            write_baseline(run, dest)
        print(f"{name}: baseline written to {dest}")
    return 0
