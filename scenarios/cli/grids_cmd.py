"""``gridtwin grids list | show NAME | import FILE --name NAME | export NAME --format F``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

_SHOW_ROWS = 5


def register(subparsers: Any) -> None:
    """Add the ``grids`` command and its sub-commands."""
    parser = subparsers.add_parser("grids", help="list, show, import and export grids")
    sub = parser.add_subparsers(dest="grids_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="table of all grids with element counts and sources")
    p_list.set_defaults(func=cmd_list)

    p_show = sub.add_parser(
        "show", help="source, counts, voltage levels and the rows of every element table"
    )
    p_show.add_argument("name", help="grid name (see `gridtwin grids list`) or a .m/.json file")
    p_show.add_argument("--rows", type=int, default=_SHOW_ROWS, help="rows per table shown")
    p_show.add_argument("--all", action="store_true", help="every row of every table")
    p_show.add_argument(
        "--table",
        action="append",
        metavar="TABLE",
        help="only this table (repeatable), with all its columns: bus, line, trafo, switch, ...",
    )
    p_show.set_defaults(func=cmd_show)

    p_imp = sub.add_parser("import", help="import a MATPOWER .m or pandapower .json grid")
    p_imp.add_argument("file", help="grid file (.m or .json)")
    p_imp.add_argument("--name", required=True, help="name to store the grid under")
    p_imp.add_argument("--force", action="store_true", help="replace a user grid of that name")
    p_imp.set_defaults(func=cmd_import)

    p_exp = sub.add_parser("export", help="write a grid as pandapower JSON, MATPOWER .m or CSVs")
    p_exp.add_argument("name", help="grid name (see `gridtwin grids list`)")
    p_exp.add_argument(
        "--format",
        choices=("json", "matpower", "csv"),
        default="json",
        help="json: pandapower JSON; matpower: a MATPOWER version 2 case (bus-branch model, "
        "names not kept); csv: a folder with one CSV per table (default json)",
    )
    p_exp.add_argument(
        "--out", help="file (json, matpower) or folder (csv); default NAME.json, NAME.m, NAME_csv"
    )
    p_exp.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p_exp.set_defaults(func=cmd_export)


def _console(width: int = 160) -> Console:
    from rich.console import Console

    con = Console(highlight=False)
    if not con.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
        con = Console(highlight=False, width=max(con.width, width))
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


#: Columns shown per table (all columns with --table); the rest of a table's columns are
#: summarised by count.
_SHOW_COLUMNS = {
    "bus": ["name", "vn_kv", "type", "zone", "in_service"],
    "line": ["name", "from_bus", "to_bus", "length_km", "std_type", "max_i_ka", "in_service"],
    "trafo": [
        "name",
        "hv_bus",
        "lv_bus",
        "sn_mva",
        "vn_hv_kv",
        "vn_lv_kv",
        "vk_percent",
        "tap_pos",
        "tap_min",
        "tap_max",
        "in_service",
    ],
    "trafo3w": [
        "name",
        "hv_bus",
        "mv_bus",
        "lv_bus",
        "sn_hv_mva",
        "vn_hv_kv",
        "vn_mv_kv",
        "vn_lv_kv",
        "in_service",
    ],
    "switch": ["name", "bus", "element", "et", "type", "closed"],
    "load": ["name", "bus", "p_mw", "q_mvar", "type", "category", "in_service"],
    "sgen": ["name", "bus", "p_mw", "q_mvar", "sn_mva", "type", "category", "in_service"],
    "gen": ["name", "bus", "p_mw", "vm_pu", "min_q_mvar", "max_q_mvar", "slack", "in_service"],
    "ext_grid": ["name", "bus", "vm_pu", "va_degree", "in_service"],
    "shunt": ["name", "bus", "p_mw", "q_mvar", "in_service"],
}


def _load_any(name: str) -> tuple[Any, Any]:
    """(net, info or None) for a registry name or a grid file path."""
    from pathlib import Path

    import grids

    if name.lower().endswith((".m", ".json")) and name not in grids.names():
        return grids.load_file(Path(name)), None
    return grids.load(name), grids.info(name)


def cmd_show(args: argparse.Namespace) -> int:
    """Print what the grid is, its voltage levels and every element table."""
    import grids
    from twin.errors import ConfigError

    net, info = _load_any(args.name)
    con = _console(400 if args.table else 160)  # --table: every column, let it be wide
    if info is not None:
        con.print(f"[bold]{info.name}[/bold]" + (" (synthetic)" if info.synthetic else ""))
        con.print(f"source: {info.source}")
        con.print(f"description: {info.description}")
    else:
        con.print(f"[bold]{args.name}[/bold] (file, not imported)")
    tables = grids.element_tables(net)
    con.print("elements: " + ", ".join(f"{t}={len(net[t])}" for t in tables))
    levels = net.bus.groupby("vn_kv").size().sort_index(ascending=False)
    con.print("voltage levels: " + ", ".join(f"{kv:g} kV ({n} buses)" for kv, n in levels.items()))
    wanted_tables = tables
    if args.table:
        unknown = [t for t in args.table if t not in tables]
        if unknown:
            raise ConfigError(
                "--table",
                unknown[0],
                f"expected one of the grid's tables ({', '.join(tables)}), found {unknown[0]!r}",
            )
        wanted_tables = list(args.table)
    rows = len(net.bus) + 10**9 if args.all else args.rows
    for table in wanted_tables:
        frame = net[table]
        if args.table:
            shown = frame
        else:
            cols = _SHOW_COLUMNS.get(table)
            shown = frame[[c for c in cols if c in frame.columns]] if cols else frame
        con.print(_frame_table(table, shown, rows))
        if table in ("load", "sgen") and "category" in frame.columns:
            counts = frame["category"].fillna("-").value_counts()
            con.print(f"{table} by category: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import a grid file as a user grid (GridFileError is reported by the CLI main)."""
    import grids

    grids.import_file(args.file, args.name, force=args.force)
    info = grids.info(args.name)
    _console().print(
        f"imported {args.file} as grid {info.name!r} into {grids.user_grid_dir()}: "
        + ", ".join(f"{k}={v}" for k, v in info.counts.items())
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a grid as JSON, MATPOWER or CSV (GridFileError is reported by the CLI main)."""
    import grids

    net, _ = _load_any(args.name)
    default = {"json": f"{args.name}.json", "matpower": f"{args.name}.m", "csv": f"{args.name}_csv"}
    out = grids.export_net(net, args.out or default[args.format], args.format, force=args.force)
    what = "tables " + ", ".join(grids.element_tables(net)) if args.format == "csv" else ""
    _console().print(
        f"wrote grid {args.name!r} as {args.format} to {out}" + (f" ({what})" if what else "")
    )
    return 0
