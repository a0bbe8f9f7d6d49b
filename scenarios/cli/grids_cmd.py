"""``gridtwin grids list | show NAME | import FILE --name NAME``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

_SHOW_ROWS = 5


def register(subparsers: Any) -> None:
    """Add the ``grids`` command and its sub-commands."""
    parser = subparsers.add_parser("grids", help="list, show and import grids")
    sub = parser.add_subparsers(dest="grids_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="table of all grids with element counts and sources")
    p_list.set_defaults(func=cmd_list)

    p_show = sub.add_parser("show", help="source, counts, voltage levels and first table rows")
    p_show.add_argument("name", help="grid name (see `gridtwin grids list`)")
    p_show.add_argument("--rows", type=int, default=_SHOW_ROWS, help="rows per table shown")
    p_show.set_defaults(func=cmd_show)

    p_imp = sub.add_parser("import", help="import a MATPOWER .m or pandapower .json grid")
    p_imp.add_argument("file", help="grid file (.m or .json)")
    p_imp.add_argument("--name", required=True, help="name to store the grid under")
    p_imp.set_defaults(func=cmd_import)


def _console() -> Console:
    from rich.console import Console

    con = Console(highlight=False)
    if not con.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        con = Console(highlight=False, width=max(con.width, 160))
    return con


def cmd_list(args: argparse.Namespace) -> int:
    """Print one row per grid; bundled counts come from the spec table (no loading)."""
    from rich.table import Table

    import grids

    table = Table(title="gridtwin grids")
    table.add_column("name", no_wrap=True)
    for col in ("buses", "lines", "trafos", "loads", "sgens", "switches"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("source", overflow="fold")
    for name in grids.names():
        info = grids.info(name)
        label = name + (" (synthetic)" if info.synthetic else "")
        label += "" if info.bundled else " (user)"
        table.add_row(label, *(str(v) for v in info.counts.values()), info.short_source)
    _console().print(table)
    return 0


def _frame_table(title: str, frame: pd.DataFrame, rows: int) -> Any:
    from rich.table import Table

    table = Table(title=f"{title} (first {min(rows, len(frame))} of {len(frame)})")
    table.add_column("index", justify="right")
    for col in frame.columns:
        table.add_column(str(col), overflow="fold")
    for idx, row in frame.head(rows).iterrows():
        table.add_row(str(idx), *(_fmt(v) for v in row))
    return table


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def cmd_show(args: argparse.Namespace) -> int:
    """Print what the grid is, its voltage levels and the head of its bus/line/load tables."""
    import grids

    info = grids.info(args.name)
    net = grids.load(args.name)
    con = _console()
    con.print(f"[bold]{info.name}[/bold]" + (" (synthetic)" if info.synthetic else ""))
    con.print(f"source: {info.source}")
    con.print(f"description: {info.description}")
    con.print(
        "elements: "
        + ", ".join(f"{t}={len(net[t])}" for t in (*grids.COUNT_TABLES, "gen", "ext_grid"))
    )
    levels = net.bus.groupby("vn_kv").size().sort_index(ascending=False)
    con.print("voltage levels: " + ", ".join(f"{kv:g} kV ({n} buses)" for kv, n in levels.items()))
    cols = {
        "bus": ["name", "vn_kv", "type", "zone", "in_service"],
        "line": ["name", "from_bus", "to_bus", "length_km", "max_i_ka", "in_service"],
        "load": ["name", "bus", "p_mw", "q_mvar", "in_service"],
    }
    for table, wanted in cols.items():
        frame = net[table]
        shown = frame[[c for c in wanted if c in frame.columns]]
        con.print(_frame_table(table, shown, args.rows))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a grid file as a user grid (GridFileError is reported by the CLI main)."""
    import grids

    grids.import_file(args.file, args.name)
    info = grids.info(args.name)
    _console().print(
        f"imported {args.file} as grid {info.name!r} into {grids.user_grid_dir()}: "
        + ", ".join(f"{k}={v}" for k, v in info.counts.items())
    )
    return 0
