"""The grid registry: an immutable table of bundled grid specs plus the user grid folder.

Bundled grids come from ``pandapower.networks`` or from versioned pandapower JSON files in
``grids/data``. User grids are pandapower JSON files in ``$GRIDTWIN_HOME/grids`` (default
``~/.local/share/gridtwin/grids``), written by :func:`grids.import_file`.

Every :func:`load` returns a fresh net. Bundled nets are built once per process and cached as
pickled bytes (a serialized form, so no caller can mutate the cache): unpickling costs
~10 ms even on case9241pegase, against 0.2-1 s for building from pandapower.networks or
``pandapower.from_json``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from twin.errors import GridFileError, UnknownGridError

if TYPE_CHECKING:
    from pandapower.auxiliary import pandapowerNet

_log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Element tables counted by :class:`GridInfo`, in display order.
COUNT_TABLES: tuple[str, ...] = ("bus", "line", "trafo", "load", "sgen", "switch")

#: Names a user grid may take: a letter or digit first, then letters, digits, ``_`` ``-`` ``.``.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: Key under which an imported net keeps its source citation (pandapower JSON keeps extra keys).
SOURCE_KEY = "gridtwin_source"
DESCRIPTION_KEY = "gridtwin_description"


@dataclass(frozen=True)
class GridInfo:
    """What a grid is and where it comes from.

    Attributes:
        name: registry name (``grids.load(name)``).
        source: citation text for the data.
        description: one or two sentences on what the grid is.
        synthetic: True when the grid is invented (not a published test case or real grid).
        buses, lines, trafos, loads, sgens, switches: element counts of the loaded net.
        bundled: True for grids shipped with gridtwin, False for user-imported grids.
        short_source: a few words naming the source, for tables.
    """

    name: str
    source: str
    description: str
    synthetic: bool
    buses: int
    lines: int
    trafos: int
    loads: int
    sgens: int
    switches: int
    bundled: bool = True
    short_source: str = ""

    @property
    def counts(self) -> dict[str, int]:
        """Element counts keyed by pandapower table name."""
        return {
            "bus": self.buses,
            "line": self.lines,
            "trafo": self.trafos,
            "load": self.loads,
            "sgen": self.sgens,
            "switch": self.switches,
        }


@dataclass(frozen=True)
class GridSpec:
    """How to build one bundled grid.

    ``loader`` is either ``"module:function"`` (called with ``kwargs``) or ``"json:<file>"`` for a
    file in ``grids/data``. ``counts`` are the element counts of the built net (bus, line, trafo,
    load, sgen, switch), stored so ``grids list`` needs no loading; a test checks them.
    """

    name: str
    loader: str
    source: str
    description: str
    counts: tuple[int, int, int, int, int, int]
    short_source: str
    synthetic: bool = False
    kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def info(self) -> GridInfo:
        return GridInfo(
            self.name,
            self.source,
            self.description,
            self.synthetic,
            *self.counts,
            bundled=True,
            short_source=self.short_source,
        )


_MATPOWER = (
    "R. D. Zimmerman, C. E. Murillo-Sanchez, R. J. Thomas, 'MATPOWER: Steady-State Operations, "
    "Planning and Analysis Tools for Power Systems Research and Education', IEEE Trans. Power "
    "Systems 26(1), 2011"
)
_PEGASE = (
    "C. Josz, S. Fliscounakis, J. Maeght, P. Panciatici, 'AC Power Flow Data in MATPOWER and QCQP "
    "Format: iTesla, RTE Snapshots, and PEGASE', arXiv:1603.01533, 2016; S. Fliscounakis, "
    "P. Panciatici, F. Capitanescu, L. Wehenkel, 'Contingency Ranking With Respect to "
    "Overloads in Very Large Power Systems Taking Into Account Uncertainty, Preventive, and "
    "Corrective Actions', "
    "IEEE Trans. Power Systems 28(4), 2013; data via MATPOWER (" + _MATPOWER + ")"
)
_PSTCA = (
    "Power Systems Test Case Archive, University of Washington (https://labs.ece.uw.edu/pstca/)"
)
_CIGRE = (
    "CIGRE Task Force C6.04.02, 'Benchmark Systems for Network Integration of Renewable and "
    "Distributed Energy Resources', CIGRE Technical Brochure 575, 2014"
)
_PANDAPOWER = (
    "L. Thurner et al., 'pandapower - An Open-Source Python Tool for Convenient Modeling, "
    "Analysis, and Optimization of Electric Power Systems', IEEE Trans. Power Systems 33(6), 2018"
)


def _pn(func: str) -> str:
    return f"pandapower.networks:{func}"


def _kerber_landnetz() -> pandapowerNet:
    """pandapower.networks.create_kerber_landnetz_kabel_1 built with a fixed seed.

    pandapower picks the cable types of the house connections with Python's global ``random``,
    so each process got a different grid. Seeded here (and the caller's random state restored)
    so a bundled grid is the same grid in every run.
    """
    import random

    import pandapower.networks as pn

    state = random.getstate()
    try:
        random.seed(20110101)
        return pn.create_kerber_landnetz_kabel_1()
    finally:
        random.setstate(state)


def _mv_oberrhein() -> pandapowerNet:
    """pandapower.networks.mv_oberrhein(scenario="load") without its final ``runpp``.

    That runpp is the first numba-compiled load flow of the process and cost 8-9 s here; the
    twin solves the grid itself. The rest repeats pandapower 3.5.6's function (load scenario:
    load scaling 0.6, sgen scaling 0, HV/MV taps -2/-3, cos phi 0.98 / 1.0).
    """
    import numpy as np
    import pandapower
    from pandapower import pp_dir

    net = pandapower.from_json(os.path.join(pp_dir, "networks", "mv_oberrhein.json"))
    net.load["q_mvar"] = np.tan(np.arccos(0.98)) * net.load["p_mw"]
    net.sgen["q_mvar"] = np.tan(np.arccos(1.0)) * net.sgen["p_mw"]
    hv_trafos = net.trafo[net.trafo.sn_mva > 1].index
    net.trafo["tap_pos"] = net.trafo["tap_pos"].astype("float64")
    net.load["scaling"] = 0.6
    net.sgen["scaling"] = 0.0
    net.trafo.loc[hv_trafos, "tap_pos"] = [-2, -3]
    net.name = "MV Oberrhein"
    return net


_SPECS: tuple[GridSpec, ...] = (
    GridSpec(
        "ieee9",
        _pn("case9"),
        "P. M. Anderson, A. A. Fouad, 'Power System Control and Stability', 1977/1980; MATPOWER "
        f"case9 ({_MATPOWER}); via pandapower.networks.case9",
        "WSCC 9-bus, 3-generator system at 345 kV.",
        (9, 9, 0, 3, 0, 0),
        "MATPOWER case9 (Anderson & Fouad)",
    ),
    GridSpec(
        "ieee14",
        _pn("case14"),
        f"IEEE 14-bus test case, {_PSTCA}; MATPOWER case14 ({_MATPOWER}); via "
        "pandapower.networks.case14",
        "IEEE 14-bus system (part of the 1962 American Electric Power system).",
        (14, 15, 5, 11, 0, 0),
        "IEEE 14-bus / MATPOWER case14",
    ),
    GridSpec(
        "ieee30",
        _pn("case30"),
        f"IEEE 30-bus dynamic test case, {_PSTCA}; MATPOWER case30 ({_MATPOWER}; based on "
        "O. Alsac, B. Stott, 'Optimal Load Flow with Steady-State Security', IEEE Trans. PAS "
        "93(3), 1974); "
        "via pandapower.networks.case30",
        "30-bus, 6-generator system at 135 kV (MATPOWER's variant of the IEEE 30-bus case).",
        (30, 41, 0, 20, 0, 0),
        "IEEE 30-bus / MATPOWER case30",
    ),
    GridSpec(
        "ieee57",
        _pn("case57"),
        f"IEEE 57-bus test case, {_PSTCA}; MATPOWER case57 ({_MATPOWER}); via "
        "pandapower.networks.case57 (voltage levels assumed by pandapower)",
        "IEEE 57-bus system (part of the 1960s American Electric Power system).",
        (57, 63, 17, 42, 0, 0),
        "IEEE 57-bus / MATPOWER case57",
    ),
    GridSpec(
        "ieee118",
        _pn("case118"),
        f"IEEE 118-bus test case, {_PSTCA}; MATPOWER case118 ({_MATPOWER}); via "
        "pandapower.networks.case118",
        "IEEE 118-bus system (part of the 1962 American Electric Power system, US Midwest).",
        (118, 173, 13, 99, 0, 0),
        "IEEE 118-bus / MATPOWER case118",
    ),
    GridSpec(
        "ieee300",
        _pn("case300"),
        f"IEEE 300-bus test case, {_PSTCA}; MATPOWER case300 ({_MATPOWER}); via "
        "pandapower.networks.case300",
        "IEEE 300-bus system (IEEE test systems task force, 1993). Converges from a flat start "
        "at base load; under load scaling start from a DC solution (runpp init='dc').",
        (300, 283, 128, 193, 8, 0),
        "IEEE 300-bus / MATPOWER case300",
    ),
    GridSpec(
        "case1354pegase",
        _pn("case1354pegase"),
        _PEGASE + "; via pandapower.networks.case1354pegase",
        "1354-bus part of the European high-voltage transmission grid (PEGASE project).",
        (1354, 1751, 240, 621, 52, 0),
        "PEGASE (Josz et al. 2016) / MATPOWER",
    ),
    GridSpec(
        "case2869pegase",
        _pn("case2869pegase"),
        _PEGASE + "; via pandapower.networks.case2869pegase",
        "2869-bus part of the European high-voltage transmission grid (PEGASE project).",
        (2869, 4051, 531, 1311, 180, 0),
        "PEGASE (Josz et al. 2016) / MATPOWER",
    ),
    GridSpec(
        "case9241pegase",
        _pn("case9241pegase"),
        _PEGASE + "; via pandapower.networks.case9241pegase",
        "9241-bus model of the European high-voltage transmission grid (PEGASE project).",
        (9241, 13797, 2252, 4461, 434, 0),
        "PEGASE (Josz et al. 2016) / MATPOWER",
    ),
    GridSpec(
        "cigre_mv",
        _pn("create_cigre_network_mv"),
        _CIGRE + "; via pandapower.networks.create_cigre_network_mv(with_der='pv_wind')",
        "CIGRE European medium-voltage benchmark (110/20 kV, two feeders) with PV and wind DER.",
        (15, 15, 2, 18, 9, 8),
        "CIGRE TB 575 MV benchmark",
        kwargs=(("with_der", "pv_wind"),),
    ),
    GridSpec(
        "cigre_lv",
        _pn("create_cigre_network_lv"),
        _CIGRE + "; via pandapower.networks.create_cigre_network_lv",
        "CIGRE European low-voltage benchmark (20/0.4 kV): residential, industrial and "
        "commercial feeders.",
        (44, 37, 3, 15, 0, 3),
        "CIGRE TB 575 LV benchmark",
    ),
    GridSpec(
        "mv_oberrhein",
        "grids.registry:_mv_oberrhein",
        _PANDAPOWER + "; via pandapower.networks.mv_oberrhein (scenario 'load')",
        "Generic 20 kV grid of the Oberrhein region: two 110/20 kV stations, four feeders, "
        "operated radially with open sectioning points (two islands).",
        (179, 181, 2, 147, 153, 322),
        "pandapower (Thurner et al. 2018)",
    ),
    GridSpec(
        "kerber_landnetz",
        "grids.registry:_kerber_landnetz",
        "G. Kerber, 'Aufnahmefaehigkeit von Niederspannungsverteilnetzen fuer die Einspeisung aus "
        "Photovoltaikkleinanlagen', Dissertation, TU Muenchen, 2011; via "
        "pandapower.networks.create_kerber_landnetz_kabel_1",
        "Kerber rural LV cable feeder (10/0.4 kV transformer, one cable feeder, 8 houses).",
        (18, 16, 1, 8, 0, 0),
        "Kerber 2011 (TU Muenchen)",
    ),
    GridSpec(
        "urban_district",
        "json:urban_district_v1.json",
        "Synthetic (gridtwin, grids/urban_district.py): modelled on typical Vietnamese urban 22 kV "
        "distribution practice (110/22 kV substation with OLTC, 22 kV cable rings run radially, "
        "22/0.4 kV kiosks); not based on any real utility's data",
        "Synthetic smart-city district: 110/22 kV OLTC substation, 22 kV ring of 8 nodes with an "
        "open point, LV feeders with residential and commercial loads, rooftop PV and EV chargers.",
        (81, 72, 9, 92, 31, 34),
        "synthetic, Vietnamese 22 kV practice",
        synthetic=True,
    ),
)

#: Bundled grids by name (read-only view).
SPECS: MappingProxyType[str, GridSpec] = MappingProxyType({s.name: s for s in _SPECS})

# Serialized (pickled) nets of bundled grids, built on first use. Bytes, never net objects.
_cache: dict[str, bytes] = {}
_cache_lock = threading.Lock()


def user_grid_dir() -> Path:
    """The folder user grids are imported into: ``$GRIDTWIN_HOME/grids``.

    ``GRIDTWIN_HOME`` defaults to ``~/.local/share/gridtwin``. The folder is not created here.
    """
    home = os.environ.get("GRIDTWIN_HOME") or os.path.join("~", ".local", "share", "gridtwin")
    return Path(home).expanduser() / "grids"


def _user_grid_files() -> dict[str, Path]:
    folder = user_grid_dir()
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        if name in SPECS:
            _log.warning("ignoring user grid %s: %r is a bundled grid name", path, name)
            continue
        if not _NAME_RE.match(name):
            _log.warning("ignoring user grid %s: %r is not a valid grid name", path, name)
            continue
        found[name] = path
    return found


def names() -> list[str]:
    """Names of all grids: bundled ones in table order, then user grids sorted by name."""
    return list(SPECS) + sorted(_user_grid_files())


def _build_bundled(spec: GridSpec) -> pandapowerNet:
    import pandapower

    kind, _, target = spec.loader.partition(":")
    if kind == "json":
        path = DATA_DIR / target
        if not path.is_file():
            raise GridFileError(str(path), "bundled grid file is missing (reinstall gridtwin)")
        net = pandapower.from_json(str(path))
    else:
        func = getattr(importlib.import_module(kind), target)
        net = func(**dict(spec.kwargs))
    # Some pandapower.networks JSON files carry a saved _ppc and stale options (mv_oberrhein);
    # drop it so every consumer starts from the net's tables.
    net["_ppc"] = None
    if not net.name:
        net.name = spec.name
    return net


def _serialized(spec: GridSpec) -> bytes:
    with _cache_lock:
        blob = _cache.get(spec.name)
        if blob is None:
            blob = _disk_cached(spec)
            if blob is None:
                _log.debug("building bundled grid %s from %s", spec.name, spec.loader)
                blob = pickle.dumps(_build_bundled(spec), protocol=pickle.HIGHEST_PROTOCOL)
                _disk_store(spec, blob)
            _cache[spec.name] = blob
        return blob


def grid_cache_dir() -> Path:
    """Where parsed bundled JSON grids are kept between processes: ``$GRIDTWIN_HOME/cache``
    (``GRIDTWIN_CACHE=off`` disables it)."""
    return user_grid_dir().parent / "cache" / "grids"


def _disk_key(spec: GridSpec) -> Path | None:
    """The cache file of a JSON-bundled grid: named by a hash of the JSON's bytes, pandapower's
    and Python's versions and the pickle protocol, so an edited file or an upgrade is a miss."""
    kind, _, target = spec.loader.partition(":")
    if kind != "json" or os.environ.get("GRIDTWIN_CACHE", "").lower() in ("off", "0", "no"):
        return None
    import hashlib
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        data = (DATA_DIR / target).read_bytes()
        pp_version = version("pandapower")
    except (OSError, PackageNotFoundError):
        return None
    h = hashlib.sha256(data)
    h.update(f"|{pp_version}|{sys.version}|{pickle.HIGHEST_PROTOCOL}".encode())
    return grid_cache_dir() / f"{spec.name}-{h.hexdigest()[:24]}.pickle"


def _disk_cached(spec: GridSpec) -> bytes | None:
    """The cached pickle of a bundled grid (~20 ms to load, where pandapower's from_json takes
    ~0.5 s: paid by every ``gridtwin run`` and every sweep worker), or None.

    Only a file of this user's, not writable by others, is read (a pickle runs code)."""
    path = _disk_key(spec)
    if path is None:
        return None
    try:
        st = path.stat()
        if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
            _log.warning("ignoring grid cache %s: not this user's or writable by others", path)
            return None
        blob = path.read_bytes()
        pickle.loads(blob)  # a truncated or foreign file: rebuild (load() unpickles again)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is a miss
        _log.debug("grid cache %s unusable (%s): rebuilding", path, exc)
        return None
    return blob


def _disk_store(spec: GridSpec, blob: bytes) -> None:
    """Keep a bundled grid's pickle for the next process; a cache that cannot be written is
    skipped (read-only home), never an error."""
    path = _disk_key(spec)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except OSError as exc:
        _log.debug("grid cache %s not written: %s", path, exc)


#: user grid file -> ((mtime_ns, size), pickled net): a sweep worker loads its grid per case
_user_cache: dict[Path, tuple[tuple[int, int], bytes]] = {}


def read_net_json(path: Path) -> pandapowerNet:
    """Read a pandapower JSON file; anything that is not a grid becomes GridFileError."""
    import pandapower
    from pandapower.auxiliary import pandapowerNet

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GridFileError(str(path), f"expected a readable UTF-8 JSON file: {exc}") from exc
    # Parse once with the json module first: pandapower's own errors on non-net JSON are
    # AttributeErrors that do not say what is wrong.
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            found = "an empty file"
        elif exc.pos >= len(text.rstrip()) - 1:
            found = "invalid JSON: the file ends inside it (a truncated file?)"
        else:
            found = f"invalid JSON at column {exc.colno}: {exc.msg}"
        raise GridFileError(
            str(path), f"expected a pandapower JSON net, found {found}", exc.lineno
        ) from exc
    if not (isinstance(doc, dict) and doc.get("_class") == "pandapowerNet"):
        found = f"a JSON {type(doc).__name__}"
        if isinstance(doc, dict):
            found = f"a JSON dict with keys {sorted(doc)[:5]}"
        raise GridFileError(
            str(path),
            f'expected a pandapower net (a JSON object with "_class": "pandapowerNet"), '
            f"found {found}",
        )
    del doc
    try:
        net = pandapower.from_json_string(text)
    except Exception as exc:  # pandapower raises many types for broken nets
        raise GridFileError(
            str(path), f"expected a pandapower JSON net, could not read it: {exc!r}"
        ) from exc
    if not isinstance(net, pandapowerNet):
        raise GridFileError(str(path), f"expected a pandapower net, found {type(net).__name__}")
    net["_ppc"] = None
    return net


#: Set when pandapower's package body is still to run (see :func:`light_pandapower`).
_pp_lock = threading.RLock()


def light_pandapower() -> None:
    """Make ``pandapower``'s package cheap to import: its submodules (the net class, the
    load-flow internals the twin uses) load on their own, and the package's ``__init__`` (which
    imports plotting with matplotlib and networkx, estimation, control, shortcircuit, the
    network schemas: ~1.3 s of a ~2 s import) runs on the first access of an attribute the
    package does not have yet (``pandapower.runpp``, ``pandapower.__version__``,
    ``from pandapower import pp_dir``), so every caller still sees the whole package.

    A no-op when pandapower is already imported (or imported partly: only the first caller
    installs it), or with ``GRIDTWIN_LIGHT_IMPORT=off``.
    """
    if "pandapower" in sys.modules:
        return
    if os.environ.get("GRIDTWIN_LIGHT_IMPORT", "").lower() in ("off", "0", "no"):
        return
    import importlib.util

    with _pp_lock:
        if "pandapower" in sys.modules:
            return
        spec = importlib.util.find_spec("pandapower")
        if spec is None or spec.loader is None:
            return
        loader = spec.loader
        mod = importlib.util.module_from_spec(spec)

        def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook (PEP 562)
            with _pp_lock:
                if mod.__dict__.get("__getattr__") is __getattr__:
                    del mod.__dict__["__getattr__"]
                    _log.debug("pandapower.%s asked for: importing the whole package", name)
                    loader.exec_module(mod)
            return getattr(mod, name)  # the hook is gone: a missing name is AttributeError

        mod.__dict__["__getattr__"] = __getattr__
        sys.modules["pandapower"] = mod


def load(name: str) -> pandapowerNet:
    """A fresh pandapower net for grid ``name`` (independent of every other call's net).

    Raises:
        UnknownGridError: ``name`` is neither bundled nor a user grid.
        GridFileError: the grid's file cannot be read.
    """
    spec = SPECS.get(name)
    if spec is not None:
        light_pandapower()  # unpickling needs the net class, not all of pandapower
        return pickle.loads(_serialized(spec))
    path = _user_grid_files().get(name)
    if path is None:
        raise UnknownGridError(name, names())
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        return read_net_json(path)  # its own error names the file
    with _cache_lock:
        hit = _user_cache.get(path)
    if hit is not None and hit[0] == stamp:
        light_pandapower()
        return pickle.loads(hit[1])
    net = read_net_json(path)
    with _cache_lock:
        _user_cache[path] = (stamp, pickle.dumps(net, protocol=pickle.HIGHEST_PROTOCOL))
    return net


def _counts(net: pandapowerNet) -> tuple[int, int, int, int, int, int]:
    c = tuple(len(net[t]) if t in net else 0 for t in COUNT_TABLES)
    return c  # type: ignore[return-value]


def info(name: str) -> GridInfo:
    """Source, description and element counts of grid ``name``.

    Bundled grids answer from the spec table without loading; user grids are read from disk.
    """
    spec = SPECS.get(name)
    if spec is not None:
        return spec.info()
    path = _user_grid_files().get(name)
    if path is None:
        raise UnknownGridError(name, names())
    net = read_net_json(path)
    source = str(net.get(SOURCE_KEY) or f"user grid {path}")
    description = str(net.get(DESCRIPTION_KEY) or net.name or "user-imported grid")
    short = source if len(source) <= 40 else source[:37] + "..."
    return GridInfo(
        name, source, description, False, *_counts(net), bundled=False, short_source=short
    )


def is_valid_name(name: str) -> bool:
    """Whether ``name`` may be used for a user grid (pattern only; bundled names are refused
    separately)."""
    return bool(_NAME_RE.match(name))
