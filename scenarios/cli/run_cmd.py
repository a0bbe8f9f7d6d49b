"""``gridtwin run FILE`` and ``gridtwin validate FILE``.

``run`` exits 0 when every check passes, 1 when one fails (or the run stopped on an error; the
results recorded so far are kept), 2 on bad input (from the CLI frame).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a scenario file",
        description="Run a scenario and write its results folder. Exit code 0: every check "
        "passed; 1: a check failed or the run stopped on an error (results so far are kept); "
        "2: bad input.",
    )
    p.add_argument("file", type=Path, help="scenario file (TOML)")
    p.add_argument("--pace", choices=("fast", "realtime"), help="override the file's pace")
    p.add_argument("--speed", type=float, help="realtime factor (with --pace realtime)")
    p.add_argument("--hardware", help='"emulated", "none", or a hardware.toml')
    p.add_argument("--out", type=Path, help="results folder (default results/<name>-<time>)")
    p.add_argument("--junit", type=Path, help="also write the JUnit XML here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no live view (also quiet when stdout is not a terminal)")  # fmt: skip
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="compare the run with this baseline (or results folder) at the end; "
                   "a difference beyond tolerance makes the exit code 1")  # fmt: skip
    from scenarios.cli.compare_cmd import add_tolerances

    add_tolerances(p)
    p.add_argument(
        "--serve",
        action="store_true",
        help="serve the embedded emulated substation (OPC UA + Modbus TCP on 127.0.0.1) for an "
        "outside controller while the run goes; implies --pace realtime unless --pace is given",
    )
    p.add_argument("--modbus-port", type=int, default=0, help="with --serve (default: free)")
    p.add_argument("--opcua-port", type=int, default=0, help="with --serve (default: free)")
    p.add_argument(
        "--twin-server",
        nargs="?",
        type=int,
        const=0,
        default=None,
        metavar="PORT",
        help="start the twin's read-only OPC UA server for the run (default port: free)",
    )
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND:POINT=VALUE[@TIME]",
        help="fault injection in the served field, from the command line: meas_bias or "
        "meas_noise on a point, e.g. meas_bias:N3.vm_pu=0.05@+20s (repeatable)",
    )
    p.set_defaults(func=run)

    v = sub.add_parser(
        "validate",
        help="check a scenario file without running it",
        description="Parse scenario files and check them against their grids. Exit code 0: "
        "all valid; 2: a file is invalid (each problem names the key, line and what is allowed).",
    )
    v.add_argument("files", type=Path, nargs="+", help="scenario files (TOML)")
    v.set_defaults(func=validate)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from scenarios.config import load_scenario
    from scenarios.engine import run_scenario
    from scenarios.live import LiveView

    console = Console(stderr=False)
    sc = load_scenario(args.file)
    if args.baseline is not None and not args.baseline.is_dir():
        from twin.errors import ConfigError

        raise ConfigError(
            str(args.baseline),
            "--baseline",
            "expected a baseline folder "
            "(scenarios/baselines/<name>) or a results folder, found no folder",
        )
    if args.inject:
        from scenarios.config import with_injections

        sc = with_injections(sc, args.inject)
    pace = args.pace or ("realtime" if args.serve else sc.pace)
    serve = (args.opcua_port, args.modbus_port) if args.serve else None
    with LiveView(
        console,
        name=sc.name,
        total=sc.steps + 1,
        start_sod=sc.start_sod,
        realtime=pace == "realtime",
        enabled=not (args.no_progress or args.quiet),
    ) as live:

        def ready(ends: dict[str, str]) -> None:
            for k, v in ends.items():
                print(f"serving {k}: {v}", flush=True)

        res = run_scenario(
            sc,
            out_dir=args.out,
            pace=args.pace or ("realtime" if args.serve else None),
            serve=serve,
            twin_server=args.twin_server,
            on_ready=ready,
            speed=args.speed,
            hardware=_cli_path(args.hardware),
            junit=args.junit,
            progress=live.progress,
            on_step=live.on_step if live.shown else None,
        )

    table = Table(
        title=f"{sc.name}: {res.steps} steps in {res.wall_s:.2f} s "
        f"({res.summary['timings']['steps_per_s']} steps/s)"
    )
    table.add_column("check")
    table.add_column("kind")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for c in res.checks:
        mark = "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.name, c.kind, mark, c.message)
    console.print(table)
    if res.error:
        console.print(f"[red]run stopped on an error:[/red] {res.error}")
    if res.out_dir is not None:
        console.print(f"results: {res.out_dir}")
        if not args.no_report:
            from scenarios.cli.report_cmd import write_run_report

            rep = write_run_report(res.out_dir)
            if rep is not None:
                console.print(f"report: {rep}")
    pace = res.summary["timings"]["pace"]
    if pace.get("pace") == "realtime":
        console.print(
            f"realtime x{pace['speed']:g}: lag mean {pace['lag_mean_s'] * 1e3:.1f} ms, "
            f"p95 {pace['lag_p95_s'] * 1e3:.1f} ms, max {pace['lag_max_s'] * 1e3:.1f} ms; "
            f"deadline misses {res.summary['deadline_misses']}"
        )
    same = True
    if args.baseline is not None and res.out_dir is not None:
        from scenarios.cli.compare_cmd import compare_to_baseline

        same = compare_to_baseline(res.out_dir, args.baseline, args)
    verdict = "[green]all checks passed[/green]" if res.passed else "[red]FAILED[/red]"
    console.print(verdict)
    if not same:
        console.print("[red]differs from the baseline[/red]")
    return 0 if res.passed and same else 1


def _cli_path(hardware: str | None) -> str | None:
    """A hardware file named on the command line is relative to the working directory (in a
    scenario file it is relative to the scenario's folder)."""
    if hardware is None or hardware in ("emulated", "none"):
        return hardware
    return str(Path(hardware).expanduser().resolve())


def validate(args: argparse.Namespace) -> int:
    from scenarios.validate import validate_file
    from twin.errors import ConfigError

    bad = 0
    for f in args.files:
        try:
            sc, problems = validate_file(f)
        except ConfigError as exc:
            print(f"{f}: INVALID\n  {exc}", file=sys.stderr)
            bad += 1
            continue
        if problems:
            print(f"{f}: INVALID ({len(problems)} problems)", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            bad += 1
            continue
        print(
            f"{f}: OK ({sc.name}: grid {sc.grid}, {sc.steps} steps of {sc.step:g} s, "
            f"{len(sc.profiles)} profiles, {len(sc.events)} events, {len(sc.checks)} checks)"
        )
    return 2 if bad else 0
