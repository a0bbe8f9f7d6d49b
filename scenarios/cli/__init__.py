"""The ``gridtwin`` command line: thin. It parses, configures logging, then calls the packages.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module sets
``func`` on its parser with ``set_defaults(func=...)``. Handlers import heavy packages lazily so
that ``gridtwin --help`` stays fast, and return a process exit code.

Exit codes (:data:`EXIT_CODES`): 0 all checks passed, 1 a check failed, 2 bad input or usage,
3 the run could not complete. :func:`main` turns errors into one ``gridtwin: error: ...`` line
on stderr (``--debug`` shows the traceback too).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings

from twin.errors import (
    ConfigError,
    GridDataError,
    InvalidInput,
    LoadflowNotConverged,
    PointMapError,
    TwinError,
)

#: The version when gridtwin is not installed (running from a checkout); setup.py has the same.
VERSION = "0.1.0"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_CODES = {
    EXIT_OK: "all checks passed (or the command succeeded)",
    EXIT_CHECK_FAILED: "a check failed (solve: the load flow did not converge)",
    EXIT_BAD_INPUT: "bad input or usage (a file, key, value or option is wrong)",
    EXIT_INCOMPLETE: "the run could not complete (hardware lost, output unwritable, interrupted)",
}
#: Errors that mean "your input is wrong" (exit 2); any other TwinError means the work could
#: not be completed (exit 3).
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    GridDataError,
    InvalidInput,
    PointMapError,
    LoadflowNotConverged,
)

# Order here is the order in ``gridtwin --help``.
_COMMAND_MODULES = [
    "scenarios.cli.grids_cmd",
    "scenarios.cli.solve_cmd",
    "scenarios.cli.points_cmd",
    "scenarios.cli.emulate_cmd",
    "scenarios.cli.certs_cmd",
    "scenarios.cli.run_cmd",
    "scenarios.cli.report_cmd",
    "scenarios.cli.compare_cmd",
    "scenarios.cli.scenarios_cmd",
    "scenarios.cli.sweep_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {k}  {v}" for k, v in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="gridtwin",
        description="Energy-grid digital twin with hardware-in-the-loop.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # a command not built yet
                continue
            raise
        mod.register(sub)
    return parser


def version_text() -> str:
    """``gridtwin X.Y.Z`` (the installed distribution's version, else :data:`VERSION`)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("gridtwin")
        except PackageNotFoundError:
            v = VERSION
    except ImportError:  # pragma: no cover
        v = VERSION
    return f"gridtwin {v} (Python {sys.version.split()[0]})"


class _DropNumbaNotice(logging.Filter):
    """pandapower logs a four-line "numba cannot be imported" warning on import; the twin does
    not use numba (its own kernel solves). Installed by the CLI only, never by library code."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return "numba cannot be imported" not in record.getMessage()
        except Exception:  # a record with bad arguments: let logging report it
            return True


_NUMBA_NOTICE = _DropNumbaNotice()


def _quiet_third_party() -> None:
    notice = _NUMBA_NOTICE  # one instance: addFilter does not add it twice
    for name in ("pandapower", "pandapower.auxiliary"):
        logging.getLogger(name).addFilter(notice)
    for handler in logging.getLogger().handlers:
        handler.addFilter(notice)  # records from any pandapower module reach the root handler
    warnings.filterwarnings("ignore", message=".*numba.*", category=UserWarning)


def _error(message: str) -> None:
    print(f"gridtwin: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EXIT_CODES`).

    Called without ``argv`` (the ``gridtwin`` program, ``python -m scenarios.cli``) it ends the
    process itself once the command is done (:func:`_end_process`); with ``argv`` (tests, an
    embedding program) it returns the code.
    """
    code = _main(argv)
    if argv is None:
        _end_process(code)
    return code


def _end_process(code: int) -> None:
    """End the program now: flush the output, run the atexit handlers, ``os._exit(code)``.

    The interpreter's own shut-down frees every object one by one (pandas, pandapower, the net,
    the recorded columns, matplotlib): 0.2-0.7 s after ``gridtwin run city_day`` had written
    everything, closed its files and printed its verdict. ``GRIDTWIN_FAST_EXIT=0`` keeps the
    normal shut-down.
    """
    import os

    if os.environ.get("GRIDTWIN_FAST_EXIT", "").strip().lower() in ("0", "off", "no"):
        return
    import atexit

    try:
        run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
        if run_exitfuncs is None:  # not CPython: the normal shut-down
            return
        run_exitfuncs()  # logging.shutdown, temporary folders' finalizers, coverage, ...
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # noqa: BLE001 - a closed pipe, a handler that failed: the normal way
        return
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    if args.debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_third_party()
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except _INPUT_ERRORS as exc:
        if args.debug:
            traceback.print_exc()
        _error(str(exc))
        return EXIT_BAD_INPUT
    except TwinError as exc:  # hardware lost, sync failures: the work could not be completed
        if args.debug:
            traceback.print_exc()
        _error(f"{exc} (could not complete)")
        return EXIT_INCOMPLETE
    except OSError as exc:  # an unwritable output, a full disk, a refused port
        if args.debug:
            traceback.print_exc()
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        _error(f"{exc.strerror or exc}{where} (could not complete)")
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        _error("interrupted (could not complete)")
        return EXIT_INCOMPLETE
    except Exception as exc:  # a bug: say so in one line, the traceback with --debug
        if args.debug:
            traceback.print_exc()
        _error(
            f"unexpected {type(exc).__name__}: {exc} (a gridtwin bug; rerun with --debug for "
            "the traceback and report it)"
        )
        return EXIT_INCOMPLETE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
