"""``gridtwin solve NAME [--backend auto|cython|numpy] [--json]``: one load flow of a grid."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``solve`` command."""
    parser = subparsers.add_parser("solve", help="solve one load flow of a grid and print buses")
    parser.add_argument("name", help="grid name (see `gridtwin grids list`)")
    parser.add_argument(
        "--backend", choices=("auto", "cython", "numpy"), default="auto", help="load-flow kernel"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=cmd_solve)


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def cmd_solve(args: argparse.Namespace) -> int:
    """Load the grid, compile it, solve once and print the bus results."""
    import grids
    from twin.model import GridModel

    net = grids.load(args.name)
    model = GridModel(net, backend=args.backend)
    sol = model.solve()
    index = [int(i) for i in net.bus.index]
    if args.json:
        out = {
            "converged": bool(sol.converged),
            "iterations": int(sol.iterations),
            "backend": model.backend,
            "bus": {
                "index": index,
                "vm_pu": [_num(v) for v in sol.vm_pu],
                "va_degree": [_num(v) for v in sol.va_degree],
            },
        }
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{args.name}: converged={sol.converged} iterations={sol.iterations} "
        f"backend={model.backend}"
    )
    table.add_column("bus", justify="right")
    table.add_column("name")
    table.add_column("vm_pu", justify="right")
    table.add_column("va_degree", justify="right")
    names = net.bus["name"].astype(str).tolist() if "name" in net.bus else [""] * len(index)
    for i, nm, vm, va in zip(index, names, sol.vm_pu, sol.va_degree):
        table.add_row(str(i), nm, f"{vm:.6f}", f"{va:.4f}")
    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=max(con.width, 120))
    con.print(table)
    return 0
