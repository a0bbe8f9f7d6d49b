"""``gridtwin solve GRID [--backend auto|cython|numpy] [--flows] [--json]``: one load flow.

GRID is a grid name (``gridtwin grids list``) or a grid file (``.json`` pandapower, ``.m``
MATPOWER), as in a scenario's ``grid`` key. ``--flows`` adds line and trafo flows, loadings and
losses. Exit code 0 when the load flow converged, 1 when it did not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

#: Columns printed per branch table with --flows.
_FLOW_COLUMNS = {
    "line": ("p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "pl_mw", "ql_mvar", "i_ka",
             "loading_percent"),
    "trafo": ("p_hv_mw", "q_hv_mvar", "p_lv_mw", "q_lv_mvar", "pl_mw", "ql_mvar", "i_hv_ka",
              "loading_percent"),
}  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the ``solve`` command."""
    parser = subparsers.add_parser(
        "solve",
        help="solve one load flow of a grid and print buses (and, with --flows, line and "
        "trafo flows and losses)",
        description="Solve one load flow. Exit code 0: converged; 1: did not converge; "
        "2: bad input.",
    )
    parser.add_argument(
        "name",
        metavar="GRID",
        help="grid name (see `gridtwin grids list`) or a grid file: .json (pandapower) or "
        ".m (MATPOWER)",
    )
    parser.add_argument(
        "--backend", choices=("auto", "cython", "numpy"), default="auto", help="load-flow kernel"
    )
    parser.add_argument(
        "--flows", action="store_true", help="also line and trafo flows, loadings and losses"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=cmd_solve)


def _num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _load(name: str) -> Any:
    import grids

    if "/" in name or "\\" in name or name.lower().endswith((".json", ".m")):
        if name not in grids.names():
            return grids.load_file(Path(name))
    return grids.load(name)


def _labels(net: Any, table: str) -> list[str]:
    """Element labels in table order, as every module names them (``twin.labels``)."""
    from twin.labels import table_labels

    return list(table_labels(net, table).values())


def _flows(net: Any, sol: Any) -> dict[str, Any]:
    """Per table: index, name and the flow columns; plus losses in MW and Mvar."""
    out: dict[str, Any] = {}
    losses = {"line_mw": 0.0, "line_mvar": 0.0, "trafo_mw": 0.0, "trafo_mvar": 0.0}
    for table, cols in _FLOW_COLUMNS.items():
        if table not in net or len(net[table]) == 0:
            continue
        data: dict[str, Any] = {
            "index": [int(i) for i in net[table].index],
            "name": _labels(net, table),
        }
        for col in cols:
            data[col] = [float(v) for v in sol.get(table, col)]
        out[table] = data
        pl = [v for v in data["pl_mw"] if math.isfinite(v)]
        ql = [v for v in data["ql_mvar"] if math.isfinite(v)]
        losses[f"{table}_mw"] = float(sum(pl))
        losses[f"{table}_mvar"] = float(sum(ql))
    losses["total_mw"] = losses["line_mw"] + losses["trafo_mw"]
    losses["total_mvar"] = losses["line_mvar"] + losses["trafo_mvar"]
    out["losses"] = losses
    return out


def cmd_solve(args: argparse.Namespace) -> int:
    """Load the grid, compile it, solve once and print the bus (and branch) results."""
    from twin.errors import LoadflowNotConverged
    from twin.model import GridModel

    net = _load(args.name)
    model = GridModel(net, backend=args.backend)
    try:
        sol = model.solve()
    except LoadflowNotConverged as exc:
        if args.json:
            doc = {
                "converged": False,
                "iterations": exc.iterations,
                "backend": model.backend,
                "worst_bus": exc.worst_bus,
                "mismatch_pu": _num(exc.mismatch),
                "message": str(exc),
            }
            sys.stdout.write(json.dumps(doc) + "\n")
        else:
            print(f"{args.name}: {exc}")
        return 1
    rc = 0 if sol.converged else 1
    index = [int(i) for i in net.bus.index]
    flows = _flows(net, sol) if args.flows and sol.converged else None
    if args.json:
        out: dict[str, Any] = {
            "converged": bool(sol.converged),
            "iterations": int(sol.iterations),
            "backend": model.backend,
            "bus": {
                "index": index,
                "vm_pu": [_num(v) for v in sol.vm_pu],
                "va_degree": [_num(v) for v in sol.va_degree],
            },
        }
        if flows is not None:
            for table in _FLOW_COLUMNS:
                if table in flows:
                    out[table] = {
                        k: [_num(x) if isinstance(x, float) else x for x in v]
                        for k, v in flows[table].items()
                    }
            out["losses"] = flows["losses"]
        sys.stdout.write(json.dumps(out) + "\n")
        return rc
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=max(con.width, 120))
    bus_table = Table(
        title=f"{args.name}: converged={sol.converged} iterations={sol.iterations} "
        f"backend={model.backend}"
    )
    bus_table.add_column("bus", justify="right")
    bus_table.add_column("name")
    bus_table.add_column("vm_pu", justify="right")
    bus_table.add_column("va_degree", justify="right")
    names = _labels(net, "bus")
    for i, nm, vm, va in zip(index, names, sol.vm_pu, sol.va_degree):
        bus_table.add_row(str(i), nm, f"{vm:.6f}", f"{va:.4f}")
    con.print(bus_table)
    if flows is not None:
        for tname, cols in _FLOW_COLUMNS.items():
            if tname not in flows:
                continue
            t = Table(title=f"{tname} flows")
            t.add_column(tname, justify="right")
            t.add_column("name")
            for col in cols:
                t.add_column(col, justify="right")
            data = flows[tname]
            for k, idx in enumerate(data["index"]):
                t.add_row(str(idx), data["name"][k], *(_cell(data[c][k], c) for c in cols))
            con.print(t)
        lo = flows["losses"]
        con.print(
            f"losses: lines {lo['line_mw']:.4f} MW / {lo['line_mvar']:.4f} Mvar, trafos "
            f"{lo['trafo_mw']:.4f} MW / {lo['trafo_mvar']:.4f} Mvar, total "
            f"{lo['total_mw']:.4f} MW / {lo['total_mvar']:.4f} Mvar"
        )
    elif args.flows:
        con.print("no flows: the load flow did not converge")
    return rc


def _cell(v: float, col: str) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.2f}" if col == "loading_percent" else f"{v:.4f}"
