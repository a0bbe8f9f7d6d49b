"""``gridtwin points``: generate a point map for a grid, or check a point map against one.

gridtwin points generate --grid ieee14 [--mode hil|mirror] [--out FILE]
gridtwin points check FILE --grid ieee14
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``points`` with its ``generate`` and ``check`` sub-commands."""
    parser = subparsers.add_parser(
        "points",
        help="generate or check a point map (OPC UA + Modbus)",
        description="Generate a point map for a grid, or check a point map file against a grid.",
    )
    sub = parser.add_subparsers(dest="points_command", metavar="ACTION")

    gen = sub.add_parser("generate", help="write a full point map for a grid")
    gen.add_argument("--grid", required=True, help="grid name (see `gridtwin grids`)")
    gen.add_argument("--mode", choices=("hil", "mirror"), default="hil", help="default: hil")
    gen.add_argument("--substation", default="SS1", help="substation name (default: SS1)")
    gen.add_argument("--unit", type=int, default=1, help="first Modbus unit id (default: 1)")
    gen.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    gen.set_defaults(func=_generate)

    chk = sub.add_parser("check", help="check a point map file against a grid")
    chk.add_argument("file", type=Path, help="point map (TOML)")
    chk.add_argument("--grid", required=True, help="grid name (see `gridtwin grids`)")
    chk.set_defaults(func=_check)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load_grid(name: str):
    import grids

    return grids.load(name)


def _generate(args: argparse.Namespace) -> int:
    from twin.pointmap import dumps_pointmap, generate_pointmap

    net = _load_grid(args.grid)
    pm = generate_pointmap(net, mode=args.mode, substation=args.substation, unit=args.unit)
    pm = type(pm)(
        points=pm.points,
        substation=pm.substation,
        namespace=pm.namespace,
        stale_factor=pm.stale_factor,
        grid=args.grid,  # the registry name, which `points check --grid` takes
        mode=pm.mode,
    )
    text = dumps_pointmap(pm)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {len(pm)} points to {args.out}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from twin.errors import PointMapError
    from twin.pointmap import check_pointmap, load_pointmap, summarize

    net = _load_grid(args.grid)  # an unknown grid is a usage error: main() prints it (exit 2)
    try:
        pm = load_pointmap(args.file)
    except PointMapError as exc:
        print(str(exc.args[0]).split(":\n", 1)[0] if exc.problems else exc)
        for line in exc.problems:
            print(f"  {line}")
        return 1
    problems = check_pointmap(pm, net)
    if problems:
        print(f"{args.file}: {len(problems)} problems against grid {args.grid!r}:")
        for line in problems:
            print(f"  {line}")
        return 1
    counts = summarize(pm)
    print(f"OK: {args.file}: {len(pm)} points fit grid {args.grid!r}")
    for group in ("kind", "modbus", "direction"):
        items = ", ".join(f"{k} {v}" for k, v in sorted(counts[group].items()))
        print(f"  {group}: {items or '-'}")
    return 0
