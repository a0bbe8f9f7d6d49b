"""The ``gridtwin`` command line: thin. It parses, configures logging, then calls the packages.

Each sub-command lives in its own module exposing ``register(subparsers)``; the module sets
``func`` on its parser with ``set_defaults(func=...)``. Handlers import heavy packages lazily so
that ``gridtwin --help`` stays fast, and return a process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from twin.errors import TwinError

# Order here is the order in ``gridtwin --help``.
_COMMAND_MODULES = [
    "scenarios.cli.grids_cmd",
    "scenarios.cli.solve_cmd",
    "scenarios.cli.points_cmd",
    "scenarios.cli.emulate_cmd",
    "scenarios.cli.run_cmd",
    "scenarios.cli.sweep_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridtwin",
        description="Energy-grid digital twin with hardware-in-the-loop.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TwinError as exc:
        print(f"gridtwin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
