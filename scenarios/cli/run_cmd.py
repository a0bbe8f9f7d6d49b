"""``gridtwin run FILE...`` and ``gridtwin validate FILE...``.

A FILE is a scenario file or the name of a bundled scenario (``gridtwin scenarios list``).
``run`` exits 0 when every check of every scenario passes, 1 when a check fails, 2 on bad input
or usage (before anything runs: every scenario is loaded and checked first), 3 when a run could
not complete (interrupted, output unwritable, hardware lost); with several scenarios, the worst.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, found {text!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run scenario files (or bundled scenarios by name)",
        description="Run scenarios and write one results folder each. FILE is a scenario file "
        "or a bundled scenario's name (gridtwin scenarios list). Exit code 0: every check "
        "passed; 1: a check failed; 2: bad input or usage (nothing is run); 3: a run could not "
        "complete (interrupted, output unwritable, hardware lost); several scenarios: the worst.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="scenario file (TOML) or bundled name")
    p.add_argument("--pace", choices=("fast", "realtime"), help="override the file's pace")
    p.add_argument("--speed", type=_positive,
                   help="realtime factor > 0 (needs pace realtime: --pace realtime or the "
                   "file's pace)")  # fmt: skip
    p.add_argument("--duration", metavar="DUR", help='override the duration, e.g. "30min"')
    p.add_argument("--until", metavar="TIME",
                   help='run until this time (e.g. "13:00" or "+2h"), not duration')  # fmt: skip
    p.add_argument("--seed", type=int, help="override the file's seed")
    p.add_argument("--hardware", help='"emulated", "none", or a hardware.toml')
    p.add_argument("--out", type=Path,
                   help="results folder (default results/<name>-<time>); with several "
                   "scenarios, the parent of one folder per scenario")  # fmt: skip
    p.add_argument("--force", action="store_true",
                   help="replace the results already in --out")  # fmt: skip
    p.add_argument("--junit", type=Path,
                   help="also write the JUnit XML here (one testsuite per scenario)")  # fmt: skip
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
    add_security_options(p)
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND:POINT=VALUE[@TIME]",
        help="fault injection in the served field, from the command line: meas_bias:POINT=V or "
        "meas_noise:POINT=SIGMA, frozen:POINT, offline:DEVICE, online:DEVICE, each @TIME, e.g. "
        "meas_bias:N3.vm_pu=0.05@+20s (repeatable)",
    )
    p.set_defaults(func=run)

    v = sub.add_parser(
        "validate",
        help="check a scenario file without running it",
        description="Parse scenario files and check them against their grids. Exit code 0: "
        "all valid; 2: a file is invalid (each problem names the key, line and what is allowed).",
    )
    v.add_argument("files", nargs="+", metavar="FILE",
                   help="scenario files (TOML) or bundled names")  # fmt: skip
    v.set_defaults(func=validate)


def add_security_options(p: argparse.ArgumentParser) -> None:
    """``--pki``, ``--users``, ``--insecure``, ``--embedded-security`` (docs/safety.md)."""
    sec = p.add_argument_group(
        "security of --serve, --twin-server and the embedded links (docs/safety.md)"
    )
    sec.add_argument("--pki", type=Path, metavar="DIR",
                     help="the twin's PKI folder (gridtwin certs create): certificate of the "
                     "servers, DIR/trusted/ the client certificates they accept (default: a "
                     "one-time certificate, its folder printed)")  # fmt: skip
    sec.add_argument("--users", type=Path, metavar="FILE",
                     help="users file with password hashes (gridtwin certs add-user) for "
                     "--serve and --twin-server (default: one-time logins, printed)")  # fmt: skip
    sec.add_argument("--insecure", action="store_true",
                     help="also offer the None policy and anonymous sessions (loopback tests "
                     "only; announced)")  # fmt: skip
    sec.add_argument("--embedded-security", choices=("None", "Sign", "SignAndEncrypt"),
                     default="None",
                     help="OPC UA security of the twin's link to the embedded emulator "
                     "(loopback, one-time passwords; default None; --serve: SignAndEncrypt "
                     "unless --insecure)")  # fmt: skip


def run_security(args: argparse.Namespace) -> Any:
    """The run's :class:`hil.security.run.RunSecurity` from the options (announces
    ``--insecure`` on stderr), or None when every option is its default (the same as
    ``RunSecurity()`` to the fields, without importing the OPC UA stack for a run that may not
    use it). Raises ConfigError naming the option."""
    if (
        getattr(args, "pki", None) is None
        and getattr(args, "users", None) is None
        and not getattr(args, "insecure", False)
        and (getattr(args, "embedded_security", None) or "None") == "None"
    ):
        return None
    from hil.security.certs import CertificateError
    from hil.security.run import RunSecurity
    from twin.errors import ConfigError

    pki = getattr(args, "pki", None)
    users = getattr(args, "users", None)
    if users is not None and not Path(users).is_file():
        raise ConfigError(str(users), "--users", "expected a users file (gridtwin certs "
                          "add-user --users FILE), found no file")  # fmt: skip
    try:
        sec = RunSecurity(pki=pki, users=users, insecure=bool(getattr(args, "insecure", False)),
                          embedded=getattr(args, "embedded_security", None) or "None")  # fmt: skip
    except CertificateError as exc:
        raise ConfigError(str(pki or "--embedded-security"), "--pki", str(exc)) from None
    if sec.insecure:
        print(
            "WARNING: --insecure: the twin's server (and the served substation) offer the None "
            "policy and anonymous sessions; passwords and values cross the wire in clear. Only "
            "for loopback tests.",
            file=sys.stderr,
        )
    return sec


def _scenario_file(f: Path | str) -> Path:
    """A scenario file as given, else the bundled scenario of that name.

    Raises:
        ConfigError: neither (with the closest bundled names).
    """
    p = Path(f)
    if p.is_file() or p.suffix or "/" in str(f) or "\\" in str(f):
        return p  # a path: load_scenario says what is wrong with it
    from scenarios.cli.scenarios_cmd import bundled, find_bundled

    found = find_bundled(str(f))
    if found is not None:
        return found
    import difflib

    from twin.errors import ConfigError

    names = list(bundled())
    close = difflib.get_close_matches(str(f), names, n=3)
    raise ConfigError(
        str(f),
        "file",
        "expected a scenario file or a bundled scenario name, found neither"
        + (f"; did you mean {', '.join(close)}?" if close else f"; bundled: {', '.join(names)}"),
    )


class _Stopped(KeyboardInterrupt):
    """A signal, raised where the run's code is (as Ctrl-C is by default), with its name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _on_signal(signum: int, frame: Any) -> None:
    raise _Stopped("Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name)


def _install_stop_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`_Stopped` for the run's duration.

    Our own SIGINT handler (not Python's default one) also keeps asyncio from installing its
    handler, which only cancels the main task when the loop next gets control: a fast-paced
    run with the model alone never gives it control, so Ctrl-C would wait for the end.
    """
    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (an embedding program): leave signals alone
            pass
    return old


def run(args: argparse.Namespace) -> int:
    from scenarios.config import load_scenario, with_injections, with_overrides
    from scenarios.results import prepare_out_dir
    from twin.errors import ConfigError

    if args.baseline is not None and not args.baseline.is_dir():
        raise ConfigError(
            str(args.baseline),
            "--baseline",
            "expected a baseline folder "
            "(scenarios/baselines/<name>) or a results folder, found no folder",
        )
    # every scenario is loaded, overridden and its output folder checked before any runs
    plans = []
    for f in args.files:
        sc = load_scenario(_scenario_file(f))
        sc = with_overrides(sc, duration=args.duration, until=args.until, seed=args.seed)
        if args.inject:
            sc = with_injections(sc, args.inject)
        pace = args.pace or ("realtime" if args.serve else sc.pace)
        if args.speed is not None and pace != "realtime":
            raise ConfigError(
                str(sc.path),
                "--speed",
                "a realtime factor needs pace realtime: expected --pace realtime (or pace = "
                f'"realtime" in the file), found pace {pace!r}',
            )
        plans.append(sc)
    if len(plans) > 1:  # grid, hardware and point map too, so that a bad B runs no A
        _check_all(plans, args)
    names = [sc.name for sc in plans]
    if len(set(names)) != len(names) and args.out is not None:
        raise ConfigError("--out", "--out", f"expected scenarios of distinct names, found {names}")
    from scenarios.engine import default_out_dir

    outs: list[Path] = []
    for sc in plans:
        if args.out is None:
            outs.append(prepare_out_dir(default_out_dir(sc)))
        elif len(plans) == 1:
            outs.append(prepare_out_dir(args.out, force=args.force))
        else:
            outs.append(prepare_out_dir(args.out / sc.name, force=args.force))
    args.run_security = run_security(args)
    codes: list[int] = []
    results: list[Any] = []
    old = _install_stop_handlers()
    try:
        for sc, out in zip(plans, outs):
            code, res = _run_one(sc, out, args)
            codes.append(code)
            results.append(res)
            if res.error.startswith("interrupted"):
                break  # Ctrl-C stops the batch, not only the scenario running
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if args.junit is not None and len(plans) > 1 and results:
        from scenarios.results import write_junit_many

        try:
            write_junit_many(args.junit, results)
        except OSError as exc:
            print(f"gridtwin: error: could not write {args.junit}: {exc.strerror or exc}",
                  file=sys.stderr)  # fmt: skip
            codes.append(3)
    if len(plans) > 1:
        for sc, code in zip(plans, codes):
            print(f"{sc.name}: {_VERDICTS.get(code, code)} (exit {code})")
        for sc in plans[len(results) :]:
            print(f"{sc.name}: not run (interrupted)")
    return max(codes) if codes else 3


def _check_all(plans: list[Any], args: argparse.Namespace) -> None:
    """Every scenario of a batch against its grid, hardware file and point map, before any runs.

    Raises:
        ConfigError: the first scenario with a problem (as ``run_scenario`` would).
    """
    import dataclasses

    from scenarios.validate import (
        assert_against_grid,
        field_pointmap,
        load_grid,
        load_hardware_of,
    )

    hardware = _cli_path(args.hardware)
    for sc in plans:
        if hardware is not None:
            sc = dataclasses.replace(sc, hardware=hardware)
        net = load_grid(sc)
        hw = load_hardware_of(sc)
        assert_against_grid(sc, net, field_pointmap(sc, net, hw), hw)


_VERDICTS = {0: "passed", 1: "FAILED", 2: "bad input", 3: "could not complete"}


def _run_one(sc: Any, out: Path | None, args: argparse.Namespace) -> tuple[int, Any]:
    from rich.console import Console
    from rich.table import Table

    from scenarios.engine import run_scenario
    from scenarios.live import LiveView

    console = Console(stderr=False)
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

        try:
            res = run_scenario(
                sc,
                out_dir=out,
                pace=args.pace or ("realtime" if args.serve else None),
                serve=serve,
                twin_server=args.twin_server,
                security=getattr(args, "run_security", None),
                on_ready=ready,
                speed=args.speed,
                hardware=_cli_path(args.hardware),
                junit=args.junit if len(args.files) == 1 else None,
                progress=live.progress,
                on_step=live.on_step if live.shown else None,
            )
        except BaseException:  # refused before it started (bad input): leave no empty folder
            if out is not None and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise

    t = res.summary["timings"]
    console.print(run_table(res, Table), soft_wrap=False)
    if res.error:
        console.print(f"[red]run stopped:[/red] {res.error}", highlight=False)
    for u in res.unwritten:
        console.print(f"[red]not written:[/red] {u}", highlight=False)
    if res.out_dir is not None:
        console.print(f"results: {res.out_dir}", highlight=False)
        if not args.no_report:
            from scenarios.cli.report_cmd import write_run_report

            try:
                rep = write_run_report(res.out_dir)
            except OSError as exc:
                console.print(f"[red]report not written:[/red] {exc.strerror or exc}")
                rep = None
            if rep is not None:
                console.print(f"report: {rep}", highlight=False)
    p = t["pace"]
    if p.get("pace") == "realtime":
        console.print(
            f"realtime x{p['speed']:g}: lag mean {p['lag_mean_s'] * 1e3:.1f} ms, "
            f"p95 {p['lag_p95_s'] * 1e3:.1f} ms, max {p['lag_max_s'] * 1e3:.1f} ms; "
            f"deadline misses {res.summary['deadline_misses']}"
        )
    same = True
    if args.baseline is not None and res.out_dir is not None and not res.error:
        from scenarios.cli.compare_cmd import compare_to_baseline

        same = compare_to_baseline(res.out_dir, args.baseline, args)
    if res.error or res.unwritten:
        console.print("[red]could not complete[/red] (exit 3)")
        return 3, res
    verdict = "[green]all checks passed[/green]" if res.passed else "[red]FAILED[/red]"
    console.print(verdict)
    if not same:
        console.print("[red]differs from the baseline[/red]")
    return (0 if res.passed and same else 1), res


def headline(res: Any) -> str:
    """``NAME: N steps, 24 h simulated in 8.70 s wall (6.90 s stepping: 208.8 steps/s)``: the wall
    time of the whole run (grid load and field start-up included), and the rate of the stepping
    alone, named as such (the progress bar's and summary.json's ``timings.steps_per_s``)."""
    t = res.summary["timings"]
    wall = float(t["wall_s"])
    run_s = float(t.get("run_s") or 0.0)
    simulated = max(res.steps - 1, 0) * res.scenario.step
    rate = f"{run_s:.2f} s stepping: {res.steps / run_s:.1f} steps/s" if run_s > 0 else "-"
    return (
        f"{res.scenario.name}: {res.steps} steps, {_span(simulated)} simulated in "
        f"{wall:.2f} s wall ({rate})"
    )


def run_table(res: Any, table_cls: Any) -> Any:
    """The checks table: the check name and kind fold onto more lines rather than being cut
    (at 80 columns the detail column takes what is left)."""
    table = table_cls(title=headline(res), expand=False)
    table.add_column("check", overflow="fold", min_width=8)
    table.add_column("kind", overflow="fold", min_width=4)
    table.add_column("result", no_wrap=True, min_width=4)
    table.add_column("detail", overflow="fold", ratio=1)
    for c in res.checks:
        mark = "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]"
        table.add_row(c.name, c.kind, mark, c.message)
    return table


def _span(seconds: float) -> str:
    """A simulated span for the headline: "24 h", "1 h 30 min", "90 s"."""
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    h, m = divmod(s // 60, 60)
    if h and m:
        return f"{h} h {m} min"
    return f"{h} h" if h else f"{m} min"


def _cli_path(hardware: str | None) -> str | None:
    """A hardware file named on the command line is relative to the working directory (in a
    scenario file it is relative to the scenario's folder)."""
    if hardware is None or hardware in ("emulated", "none"):
        return hardware
    return str(Path(hardware).expanduser().resolve())


def validate(args: argparse.Namespace) -> int:
    from scenarios.validate import validate_file
    from twin.errors import ConfigError, GridDataError, PointMapError

    bad = 0
    for f in args.files:
        try:
            sc, problems = validate_file(_scenario_file(f))
        except (ConfigError, PointMapError, GridDataError) as exc:
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
