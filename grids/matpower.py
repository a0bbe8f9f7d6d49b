"""MATPOWER case files (``.m``) read and written without MATLAB, Octave or a generic parser.

The reader understands both forms MATPOWER itself writes: version 2 (``function mpc = name``
then ``mpc.baseMVA = ...; mpc.bus = [...];``) and version 1 (``function [baseMVA, bus, gen,
branch] = name`` then bare ``bus = [...];``). It checks what it reads (every matrix closed, every
row the same width, numbers where numbers belong, bus numbers that exist) and says where, by line,
a file is not a case; it never hands a truncated table on as if it were complete.

:func:`read_case` returns a PYPOWER-style dict (0-based bus numbers, as pandapower's own
``from_mpc`` makes) for ``pandapower.converter.from_ppc``; :func:`write_case` writes a version 2
case from such a dict.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import GridFileError

#: Columns MATPOWER requires (version 1 widths), and the names of the first ones, for messages.
_MIN_COLS = {"bus": 13, "gen": 10, "branch": 11}
_COL_HELP = {
    "bus": "bus_i type Pd Qd Gs Bs area Vm Va baseKV zone Vmax Vmin",
    "gen": "bus Pg Qg Qmax Qmin Vg mBase status Pmax Pmin",
    "branch": "fbus tbus r x b rateA rateB rateC ratio angle status",
}
_REQUIRED = ("baseMVA", "bus", "gen", "branch")
_ASSIGN = re.compile(r"^\s*(?:(\w+)\.)?(\w+)\s*=\s*(.*)$", re.S)
_FUNC = re.compile(r"^\s*function\s+(?:\[([^\]]*)\]|(\w+))\s*=\s*(\w+)")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|Inf|INF)$")


def _decode(raw: bytes, path: str) -> str:
    if b"\x00" in raw[:4096]:
        at = raw.index(b"\x00")
        raise GridFileError(
            path,
            f"expected a MATPOWER case (a text .m file), found binary data (a NUL byte at "
            f"offset {at})",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = sum(1 for b in raw if b < 9 or 13 < b < 32)
        if bad > len(raw) // 100:  # control characters: not a text file at all
            line = raw[: exc.start].count(b"\n") + 1
            raise GridFileError(
                path,
                f"expected a MATPOWER case (a text .m file), found binary data "
                f"(byte 0x{raw[exc.start]:02x})",
                line,
            ) from None
        return raw.decode("latin-1")  # names in comments in a legacy 8-bit encoding


def _strip_comment(line: str) -> str:
    # '%' starts a comment unless inside a 'string'; MATLAB doubles quotes inside strings.
    out, in_str = [], False
    for i, ch in enumerate(line):
        if ch == "'" and (in_str or i == 0 or not (line[i - 1].isalnum() or line[i - 1] in ")]}")):
            in_str = not in_str
        elif ch == "%" and not in_str:
            break
        out.append(ch)
    return "".join(out)


def _statements(text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, text) of each top-level statement, comments removed.

    A statement ends at a ``;`` or line end outside brackets; ``[...]`` and ``{...}`` may span
    lines; ``...`` continues a line.
    """
    out: list[tuple[int, int, str]] = []
    buf: list[str] = []
    depth = 0
    start = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        cont = False
        if line.rstrip().endswith("..."):
            line, cont = line.rstrip()[:-3], True
        if not buf:
            start = n
        in_str = False
        for i, ch in enumerate(line):
            if ch == "'" and (
                in_str or i == 0 or not (line[i - 1].isalnum() or line[i - 1] in ")]}")
            ):
                in_str = not in_str  # brackets and ';' inside 'strings' are text
            if in_str or ch == "'":
                buf.append(ch)
                continue
            if ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth < 0:
                    raise GridFileError(
                        "", f"expected brackets in pairs, found a {ch!r} with no opening one", n
                    )
            if ch == ";" and depth == 0:
                stmt = "".join(buf).strip()
                if stmt:
                    out.append((start, n, stmt))
                buf = []
                start = n
                continue
            buf.append(ch)
        if depth > 0:
            buf.append(" ;\n" if not cont else " ")  # a row break inside a matrix
        elif not cont:
            stmt = "".join(buf).strip()
            if stmt:
                out.append((start, n, stmt))
            buf = []
        else:
            buf.append(" ")
    if depth > 0:
        stmt = "".join(buf).strip()
        m = _ASSIGN.match(stmt)
        what = (m.group(1) + "." if m and m.group(1) else "") + (m.group(2) if m else "a matrix")
        raise GridFileError(
            "",
            f"expected ']' closing {what} (opened on line {start}), found the end of the file "
            "(a truncated file?)",
            start,
        )
    return out


def _matrix(body: str, name: str, first_line: int, path: str) -> tuple[np.ndarray, list[int]]:
    inner = body.strip()
    if not (inner.startswith("[") and inner.endswith("]")):
        raise GridFileError(path, f"expected {name} = [ ... ]; found {inner[:40]!r}", first_line)
    rows: list[list[float]] = []
    row_lines: list[int] = []
    width: int | None = None
    line = first_line
    for chunk in re.split(r"([;\n])", inner[1:-1]):
        if chunk == "\n":
            line += 1
            continue
        if chunk == ";":
            continue
        tokens = [t for t in re.split(r"[\s,]+", chunk.strip()) if t]
        if not tokens:
            continue
        row = []
        for tok in tokens:
            if not _NUMBER.match(tok):
                raise GridFileError(path, f"{name}: expected a number, found {tok[:30]!r}", line)
            row.append(float(tok))
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise GridFileError(
                path,
                f"{name}: expected {width} columns in every row (as in its first row), "
                f"found {len(row)}",
                line,
            )
        rows.append(row)
        row_lines.append(line)
    if not rows:
        return np.zeros((0, _MIN_COLS.get(name, 0))), []
    return np.asarray(rows, dtype=float), row_lines


def read_case(path: str | Path) -> dict[str, Any]:
    """A MATPOWER ``.m`` case as a PYPOWER-style dict with 0-based bus numbers.

    Raises:
        GridFileError: the file is not a MATPOWER case; the message names the line, what was
            expected and what was found.
    """
    path = Path(path)
    where = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GridFileError(where, f"expected a readable file: {exc.strerror or exc}") from None
    text = _decode(raw, where)
    try:
        stmts = _statements(text)
    except GridFileError as exc:
        raise GridFileError(where, exc.problem, exc.line) from None
    fields: dict[str, tuple[int, str]] = {}
    struct: str | None = None
    seen_function = False
    for first, _last, stmt in stmts:
        f = _FUNC.match(stmt)
        if f:
            seen_function = True
            struct = f.group(2)  # "function mpc = name": fields are mpc.<field>
            continue
        m = _ASSIGN.match(stmt)
        if not m:
            continue
        owner, key, value = m.group(1), m.group(2), m.group(3)
        if owner is not None and struct is not None and owner != struct:
            continue
        if owner is None and struct is not None and key == struct:
            continue  # "mpc = struct(...)" or similar
        fields.setdefault(key, (first, value.strip()))
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        pre = f"{struct}." if struct else "mpc."
        want = ", ".join(pre + k for k in _REQUIRED)
        if not fields:
            found = "no assignment at all" + ("" if seen_function else " and no function line")
        else:
            found = f"no {', '.join(pre + k for k in missing)} (assigned: {', '.join(fields)})"
        raise GridFileError(where, f"expected a MATPOWER case with {want}; found {found}")
    base_line, base_text = fields["baseMVA"]
    try:
        base = float(base_text)
    except ValueError:
        raise GridFileError(
            where, f"baseMVA: expected a number, found {base_text[:30]!r}", base_line
        ) from None
    if not (math.isfinite(base) and base > 0):
        raise GridFileError(
            where, f"baseMVA: expected a positive number, found {base:g}", base_line
        )
    ppc: dict[str, Any] = {"baseMVA": base}
    version = fields.get("version", (0, "'2'" if struct else "'1'"))[1].strip("'\" ")
    ppc["version"] = version or "2"
    row_lines: dict[str, list[int]] = {}
    for name in ("bus", "gen", "branch"):
        line, body = fields[name]
        arr, row_lines[name] = _matrix(body, name, line, where)
        need = _MIN_COLS[name]
        if arr.shape[0] == 0:
            raise GridFileError(where, f"{name}: expected at least one row, found none", line)
        if arr.shape[1] < need:
            raise GridFileError(
                where,
                f"{name}: expected at least {need} columns ({_COL_HELP[name]}), found "
                f"{arr.shape[1]}",
                line,
            )
        if np.isnan(arr).any():
            raise GridFileError(where, f"{name}: expected numbers, found NaN", line)
        ppc[name] = arr
    if "gencost" in fields:
        line, body = fields["gencost"]
        try:
            ppc["gencost"] = _matrix(body, "gencost", line, where)[0]
        except GridFileError:
            pass  # costs are not needed for a load flow; a malformed table is left out
    _check_ids(ppc, where, row_lines)
    bus, gen, branch = ppc["bus"], ppc["gen"], ppc["branch"]
    if gen.shape[1] < 21:  # version 1 -> 2: the extra columns are zeros, as in MATPOWER
        gen = np.hstack([gen, np.zeros((gen.shape[0], 21 - gen.shape[1]))])
    if branch.shape[1] < 13:
        pad = np.tile([-360.0, 360.0], (branch.shape[0], 1))[:, : 13 - branch.shape[1]]
        branch = np.hstack([branch, pad])
    # pandapower's from_mpc conventions: 0-based bus numbers, ratio 0 (a line) stored as 1
    bus[:, 0] -= 1
    branch[:, 0] -= 1
    branch[:, 1] -= 1
    gen[:, 0] -= 1
    branch[branch[:, 8] == 0, 8] = 1
    ppc.update(bus=bus, gen=gen, branch=branch)
    return ppc


def _check_ids(ppc: dict[str, Any], where: str, row_lines: dict[str, list[int]]) -> None:
    """Bus numbers, types and base voltages; gen and branch ends that name existing buses."""

    def fail(name: str, row: int, problem: str) -> None:
        raise GridFileError(where, f"{name}: {problem}", row_lines[name][row])

    bus = ppc["bus"]
    ids = bus[:, 0]
    for r, x in enumerate(ids):
        if not (math.isfinite(x) and x == round(x) and x >= 1):
            fail("bus", r, f"expected a positive whole bus number in column 1, found {x:g}")
    seen: dict[float, int] = {}
    for r, x in enumerate(ids):
        if x in seen:
            fail("bus", r, f"expected unique bus numbers, found {x:g} again (first on line "
                 f"{row_lines['bus'][seen[x]]})")  # fmt: skip
        seen[x] = r
    for r, t in enumerate(bus[:, 1]):
        if t not in (1, 2, 3, 4):
            fail("bus", r, f"expected bus type 1 (PQ), 2 (PV), 3 (ref) or 4 (isolated) in "
                 f"column 2, found {t:g}")  # fmt: skip
    for r, kv in enumerate(bus[:, 9]):
        if not (math.isfinite(kv) and kv > 0):
            fail("bus", r, f"expected a positive baseKV (kV) in column 10 of bus {ids[r]:g}, "
                 f"found {kv:g}; set the nominal voltages in the case file")  # fmt: skip
    if not (bus[:, 1] == 3).any():
        raise GridFileError(
            where,
            "bus: expected a reference bus (type 3 in column 2), found none",
            row_lines["bus"][0],
        )
    for name, cols in (("gen", (0,)), ("branch", (0, 1))):
        for c in cols:
            for r, x in enumerate(ppc[name][:, c]):
                if x not in seen:
                    fail(name, r, f"expected a bus number from mpc.bus in column {c + 1}, "
                         f"found {x:g}, which is not a bus")  # fmt: skip


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return f"{x:.10g}"


def write_case(ppc: dict[str, Any], name: str) -> str:
    """A MATPOWER version 2 case file (text) from a PYPOWER-style dict with 0-based buses."""
    bus = np.array(np.real(ppc["bus"]), dtype=float, copy=True)
    gen = np.array(np.real(ppc["gen"]), dtype=float, copy=True)
    branch = np.array(np.real(ppc["branch"]), dtype=float, copy=True)
    # MATPOWER has no "missing": unset generator limits are unlimited, anything else 0
    for col, fill in ((3, math.inf), (4, -math.inf), (8, math.inf), (9, -math.inf)):
        if gen.shape[1] > col:
            gen[np.isnan(gen[:, col]), col] = fill
    for arr in (bus, gen, branch):
        arr[np.isnan(arr)] = 0.0
    bus[:, 0] += 1
    gen[:, 0] += 1
    branch[:, 0:2] += 1
    func = re.sub(r"\W", "_", name) or "case"
    if not func[0].isalpha():
        func = "case_" + func
    out = [
        f"function mpc = {func}",
        f"%{func.upper()}  written by gridtwin (grids export)",
        "",
        "%% MATPOWER Case Format : Version 2",
        "mpc.version = '2';",
        "",
        f"mpc.baseMVA = {_fmt(float(ppc['baseMVA']))};",
    ]
    for key, arr, ncols in (("bus", bus, 13), ("gen", gen, 21), ("branch", branch, 13)):
        out += ["", f"%% {key} data", f"%\t{_COL_HELP[key]}", f"mpc.{key} = ["]
        for row in arr[:, :ncols]:
            out.append("\t" + "\t".join(_fmt(float(v)) for v in row) + ";")
        out.append("];")
    out.append("")
    return "\n".join(out)
