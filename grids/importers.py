"""Importers: MATPOWER ``.m`` and pandapower JSON files into the user grid folder.

An imported grid is validated, then stored as ``<user grid folder>/<name>.json`` (see
:func:`grids.registry.user_grid_dir`) so that ``grids.names()`` and ``grids.load()`` see it.
The file is written to a temporary file in the same folder and renamed, so a failed import
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from grids.registry import (
    DESCRIPTION_KEY,
    SOURCE_KEY,
    SPECS,
    is_valid_name,
    read_net_json,
    user_grid_dir,
)
from twin.errors import GridFileError

if TYPE_CHECKING:
    from pandapower.auxiliary import pandapowerNet

_log = logging.getLogger(__name__)

#: Tables whose ``bus`` column must reference an existing bus.
_BUS_REFS: tuple[tuple[str, str], ...] = (
    ("line", "from_bus"),
    ("line", "to_bus"),
    ("trafo", "hv_bus"),
    ("trafo", "lv_bus"),
    ("load", "bus"),
    ("sgen", "bus"),
    ("gen", "bus"),
    ("ext_grid", "bus"),
    ("switch", "bus"),
)


def read_matpower(path: str | Path, *, f_hz: float = 50.0) -> pandapowerNet:
    """Convert a MATPOWER ``.m`` case (version 1 or 2) with pandapower's ``from_ppc``.

    The file is read by :mod:`grids.matpower` (which checks it line by line), then converted
    as pandapower's ``from_mpc`` would.

    Raises:
        GridFileError: the file is not a MATPOWER case (the message names the line, what was
            expected and what was found), or converts into a net without nominal voltages
            (MATPOWER cases may leave ``baseKV`` at 0, as MATPOWER's own case14.m does).
    """
    import numpy as np
    from pandapower.converter.pypower.from_ppc import from_ppc

    from grids.matpower import read_case

    path = Path(path)
    ppc = read_case(path)
    try:
        # The converter divides by baseKV; with baseKV = 0 numpy only warns and leaves NaN/inf
        # ratings: silence that and check the nominal voltages below.
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # pandas noise inside the converter
            try:
                net = from_ppc(ppc, f_hz=f_hz)
            except Exception:
                if "gencost" not in ppc:
                    raise
                # costs do not matter to a load flow; MATPOWER's version 1 piecewise-linear
                # costs, for one, are laid out in a way pandapower's converter refuses
                _log.info("%s: gencost not converted, importing without costs", path)
                del ppc["gencost"]
                net = from_ppc(ppc, f_hz=f_hz)
    except Exception as exc:  # pandapower's converter raises many types on odd data
        raise GridFileError(
            str(path),
            f"expected a MATPOWER case pandapower can convert; its converter refused it: "
            f"{type(exc).__name__}: {exc}",
        ) from exc
    vn = net.bus["vn_kv"].to_numpy(dtype=float)
    bad = ~np.isfinite(vn) | (vn <= 0)
    if len(vn) and bad.any():
        first = ", ".join(str(b) for b in net.bus.index[bad][:5])
        raise GridFileError(
            str(path),
            f"expected a positive baseKV (mpc.bus column 10) for every bus, found baseKV = 0 or "
            f"missing for {int(bad.sum())} of {len(vn)} buses (bus indices {first}...); "
            "set the nominal voltages in the case file",
        )
    return net


def read_pandapower_json(path: str | Path) -> pandapowerNet:
    """Read a pandapower JSON file (raises GridFileError when it is not a pandapower net)."""
    return read_net_json(Path(path))


def validate(net: object, path: str | Path) -> list[str]:
    """Problems that make ``net`` unusable as a grid (empty list when it is fine)."""
    from pandapower.auxiliary import pandapowerNet

    if not isinstance(net, pandapowerNet):
        return [f"expected a pandapower net, found {type(net).__name__}"]
    problems: list[str] = []
    if len(net.bus) == 0:
        problems.append("expected at least one bus, found none")
        return problems
    slack_gens = 0
    if "gen" in net and len(net.gen) and "slack" in net.gen:
        slack_gens = int(
            (net.gen["slack"].fillna(False).astype(bool) & net.gen["in_service"]).sum()
        )
    ext_grids = int(net.ext_grid["in_service"].sum()) if len(net.ext_grid) else 0
    if ext_grids + slack_gens == 0:
        problems.append("expected at least one in-service ext_grid or slack gen, found none")
    vn = net.bus["vn_kv"].astype(float)
    if (~vn.map(math.isfinite) | (vn <= 0)).any():
        problems.append(
            "expected positive nominal voltages (bus.vn_kv), found zero or missing ones"
        )
    buses = set(net.bus.index)
    for table, col in _BUS_REFS:
        if table in net and len(net[table]) and col in net[table]:
            missing = sorted(set(net[table][col]) - buses)
            if missing:
                problems.append(f"{table}.{col} refers to missing buses {missing[:5]}")
    return problems


def _converges(net: pandapowerNet) -> bool:
    import copy

    import pandapower

    trial = copy.deepcopy(net)
    try:
        pandapower.runpp(trial, lightsim2grid=False)
    except Exception:  # LoadflowNotConverged and pandapower's data errors alike
        try:
            pandapower.runpp(trial, lightsim2grid=False, init="dc")
        except Exception:
            return False
    return bool(trial.converged)


def _write_atomic(net: pandapowerNet, target: Path) -> None:
    import pandapower

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(pandapower.to_json(net))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a grid file is not a secret
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_file(path: str | Path) -> pandapowerNet:
    """A grid from a file without storing it: ``.m`` (MATPOWER) or ``.json`` (pandapower).

    Raises:
        GridFileError: unknown extension, no such file, not a grid, not a usable grid.
    """
    path = Path(path)
    if not path.is_file():
        raise GridFileError(str(path), "expected a grid file (.m or .json), found no such file")
    suffix = path.suffix.lower()
    if suffix == ".m":
        net = read_matpower(path)
    elif suffix == ".json":
        net = read_pandapower_json(path)
    else:
        raise GridFileError(
            str(path), f"expected a .m (MATPOWER) or .json (pandapower) file, found {suffix!r}"
        )
    problems = validate(net, path)
    if problems:
        raise GridFileError(str(path), "not a usable grid: " + "; ".join(problems))
    net["_ppc"] = None
    return net


def import_file(
    path: str | Path, name: str, *, store: bool = True, force: bool = False
) -> pandapowerNet:
    """Read, validate and (with ``store``) save a grid file as user grid ``name``.

    An existing user grid ``name`` is replaced only with ``force``.

    ``.m`` files are read as MATPOWER cases, ``.json`` files as pandapower nets. A grid that
    does not converge is still imported (a warning is logged): the twin may be meant to study it.

    Returns:
        The imported net (a fresh object; later ``grids.load(name)`` calls return new copies).

    Raises:
        GridFileError: unknown extension, a file that is corrupt, not a grid, fails conversion,
            a bundled or invalid ``name``, an existing user grid ``name`` without ``force``.
            Nothing is written then.
    """
    path = Path(path)
    if name in SPECS:
        raise GridFileError(
            str(path), f"expected a new grid name, found {name!r} which is a bundled grid"
        )
    if not is_valid_name(name):
        raise GridFileError(
            str(path),
            f"expected a grid name of letters, digits, '_', '-', '.' (max 64), found {name!r}",
        )
    if not path.is_file():
        raise GridFileError(str(path), "expected a grid file, found no such file")
    suffix = path.suffix.lower()
    if suffix == ".m":
        net = read_matpower(path)
        kind = "MATPOWER case"
    elif suffix == ".json":
        net = read_pandapower_json(path)
        kind = "pandapower JSON"
    else:
        raise GridFileError(
            str(path), f"expected a .m (MATPOWER) or .json (pandapower) file, found {suffix!r}"
        )
    problems = validate(net, path)
    if problems:
        raise GridFileError(str(path), "not a usable grid: " + "; ".join(problems))
    net["_ppc"] = None
    if not net.get(SOURCE_KEY):
        net[SOURCE_KEY] = f"user import of {kind} {path.resolve()}"
    if not net.get(DESCRIPTION_KEY):
        net[DESCRIPTION_KEY] = f"{kind} {path.name}" + (f" ({net.name})" if net.name else "")
    if not _converges(net):
        _log.warning("grid %s from %s does not converge with pandapower.runpp", name, path)
    if store:
        target = user_grid_dir() / f"{name}.json"
        if target.exists():
            if not force:
                raise GridFileError(
                    str(path),
                    f"expected a new grid name, found {name!r}, a user grid that already exists "
                    f"({target}); choose another name or replace it with --force "
                    "(force=True)",
                )
            _log.info("replacing user grid %s at %s", name, target)
        _write_atomic(net, target)
        _log.info("imported %s as user grid %s (%s)", path, name, target)
    return net


#: Formats :func:`export_net` writes.
EXPORT_FORMATS = ("json", "matpower", "csv")


def export_net(net: pandapowerNet, out: str | Path, fmt: str, *, force: bool = False) -> Path:
    """Write ``net`` as pandapower JSON, a MATPOWER version 2 case or a folder of CSV tables.

    ``matpower`` is the bus-branch model pandapower builds for its load flow (trafos become
    branches, loads and sgens bus injections; names are not kept). ``csv`` writes one
    ``<table>.csv`` per non-empty element table into the folder ``out``.

    Raises:
        GridFileError: an unknown format, or ``out`` exists and ``force`` is not set.
    """
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise GridFileError(
            str(out), f"expected a format {', '.join(EXPORT_FORMATS)}, found {fmt!r}"
        )
    if out.exists() and not force:
        what = "folder" if out.is_dir() else "file"
        raise GridFileError(
            str(out),
            f"expected a path that does not exist, found an existing {what} "
            "(replace it with --force)",
        )
    if fmt == "csv":
        try:
            out.mkdir(parents=True, exist_ok=True)
            for table in element_tables(net):
                net[table].to_csv(out / f"{table}.csv", index_label="index")
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {out}: {exc.strerror}") from exc
        return out
    if fmt == "json":
        import pandapower

        text = pandapower.to_json(net)
    else:
        from pandapower.converter.pypower.to_ppc import to_ppc

        from grids.matpower import write_case

        ppc = to_ppc(net, trafo_model="pi", init="flat", check_connectivity=False)
        _branch_g_to_bus_shunts(ppc)
        text = write_case(ppc, str(net.name or out.stem))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:  # name the file asked for, not the temporary one
        raise OSError(exc.errno, f"cannot write {out}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {out}: {exc.strerror}") from exc
        raise
    return out


def element_tables(net: pandapowerNet) -> list[str]:
    """Names of the net's non-empty element tables (no results, no internal tables)."""
    import pandas as pd

    order = ["bus", "line", "trafo", "trafo3w", "switch", "load", "sgen", "gen", "ext_grid"]
    order += [
        "shunt",
        "storage",
        "impedance",
        "ward",
        "xward",
        "dcline",
        "motor",
        "asymmetric_load",
    ]
    found = [
        t
        for t in net.keys()
        if isinstance(t, str)
        and not t.startswith(("res_", "_"))
        and isinstance(net[t], pd.DataFrame)
        and len(net[t])
        and t not in ("std_types", "bus_geodata", "line_geodata")
    ]
    return [t for t in order if t in found] + sorted(t for t in found if t not in order)


def _branch_g_to_bus_shunts(ppc: dict) -> None:
    """Move pandapower's branch conductance (trafo iron losses; MATPOWER has no such column)
    into the end buses' ``Gs``, as ``makeYbus`` applies it: G/2 at each end, over |tap|^2 at
    the from end. In-service branches only."""
    import numpy as np
    from pandapower.pypower.idx_brch import BR_G, BR_STATUS, F_BUS, T_BUS, TAP
    from pandapower.pypower.idx_bus import GS

    branch, bus = ppc["branch"], ppc["bus"]
    if "branch_g" in ppc:  # pandapower 3 keeps it beside the branch matrix
        g = np.real(np.asarray(ppc["branch_g"], dtype=complex)).reshape(-1)
    elif branch.shape[1] > BR_G:
        g = np.real(branch[:, BR_G])
    else:
        return
    g = g * np.real(branch[:, BR_STATUS])
    g = np.where(np.isfinite(g), g, 0.0)
    if not g.any():
        return
    tap = np.real(branch[:, TAP])
    tap = np.where(tap != 0, tap, 1.0)
    base = float(ppc["baseMVA"])
    f = np.real(branch[:, F_BUS]).astype(int)
    t = np.real(branch[:, T_BUS]).astype(int)
    gs = np.real(bus[:, GS]).astype(float)
    np.add.at(gs, f, g / 2 / tap**2 * base)
    np.add.at(gs, t, g / 2 * base)
    bus[:, GS] = gs
