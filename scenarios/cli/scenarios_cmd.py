"""``gridtwin scenarios list | copy NAME [DEST] [--force]``: the bundled scenario library."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from twin.errors import ConfigError
from twin.tomlfile import load_toml

#: The folder of bundled scenario files.
LIBRARY = Path(__file__).resolve().parents[1] / "library"


def bundled() -> dict[str, Path]:
    """Bundled scenario name (file stem) -> file, sorted by name."""
    return {p.stem: p for p in sorted(LIBRARY.glob("*.toml"))}


def find_bundled(name: str) -> Path | None:
    """The bundled scenario file called ``name`` (with or without ``.toml``), else None."""
    return bundled().get(name.removesuffix(".toml"))


def _describe(path: Path) -> dict[str, Any]:
    doc = load_toml(path, what="the scenario file").data
    desc = doc.get("description")
    if not desc:  # the first comment line, as the files carry a one-line summary there
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                desc = line.lstrip("# ").strip()
                break
    return {
        "name": path.stem,
        "grid": str(doc.get("grid", "")),
        "mode": str(doc.get("mode", "hil")),
        "hardware": str(doc.get("hardware", "emulated")),
        "duration": str(doc.get("duration", "")),
        "description": desc or "",
    }


def register(subparsers: Any) -> None:
    """Add the ``scenarios`` command and its sub-commands."""
    parser = subparsers.add_parser("scenarios", help="list the bundled scenarios, copy one to edit")
    sub = parser.add_subparsers(dest="scenarios_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    p_list = sub.add_parser("list", help="the bundled scenario files with a one-line description")
    p_list.set_defaults(func=cmd_list)
    p_copy = sub.add_parser(
        "copy",
        help="copy a bundled scenario (and the CSV profiles it reads) as a template to edit",
    )
    p_copy.add_argument("name", help="bundled scenario name (see `gridtwin scenarios list`)")
    p_copy.add_argument(
        "dest", nargs="?", help="file or existing folder to write; default ./NAME.toml"
    )
    p_copy.add_argument("--force", action="store_true", help="overwrite existing files")
    p_copy.set_defaults(func=cmd_copy)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bundled scenarios ({LIBRARY})")
    for col in ("name", "grid", "mode", "hardware", "duration"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold")
    for path in bundled().values():
        d = _describe(path)
        table.add_row(
            d["name"], d["grid"], d["mode"], d["hardware"], d["duration"], d["description"]
        )
    con = Console(highlight=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=max(con.width, 160))
    con.print(table)
    return 0


def _unknown(name: str) -> ConfigError:
    import difflib

    names = list(bundled())
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(
        "scenarios copy",
        "NAME",
        f"expected a bundled scenario ({', '.join(names)}), found {name!r}{hint}",
    )


def cmd_copy(args: argparse.Namespace) -> int:
    src = find_bundled(args.name)
    if src is None:
        raise _unknown(args.name)
    dest = Path(args.dest) if args.dest else Path(f"{src.stem}.toml")
    if dest.is_dir():
        dest = dest / src.name
    doc = load_toml(src, what="the scenario file").data
    # files the scenario reads by a relative path go beside the copy, so the copy runs as is
    extra: list[tuple[Path, Path]] = []
    for prof in doc.get("profile", []):
        csv = prof.get("csv")
        if isinstance(csv, str) and not Path(csv).is_absolute():
            extra.append((src.parent / csv, dest.parent / csv))
    targets = [dest] + [d for _, d in extra]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise ConfigError(
            existing[0],
            "DEST",
            "expected a path that does not exist, found an existing file "
            "(choose another DEST or overwrite with --force)",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = src.read_text(encoding="utf-8")
    dest.write_text(
        f"# A copy of the bundled scenario {src.stem!r} to edit; run it with: gridtwin run {dest}\n"
        + text,
        encoding="utf-8",
    )
    for a, b in extra:
        b.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(a, b)
    also = f" (with {', '.join(str(b) for _, b in extra)})" if extra else ""
    print(f"wrote {dest}{also}; check it with: gridtwin validate {dest}")
    return 0
