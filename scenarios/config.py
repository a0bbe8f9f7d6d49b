"""The scenario file (TOML): parsed once, at the edge, into frozen dataclasses.

A wrong key, a wrong value or a time out of range raises ``twin.errors.ConfigError`` naming the
file, the key (with its line where it can be found) and what is allowed. Checks against the grid
(unknown elements) are a second step, :func:`check_against_grid`, because they need the net.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from scenarios.timeparse import (
    DURATION_HELP,
    TIME_HELP,
    format_clock,
    parse_duration,
    parse_start,
    parse_time,
)
from twin.errors import ConfigError
from twin.tomlfile import parse_toml, read_text

MODES = ("hil", "mirror")
PACES = ("fast", "realtime")
BACKENDS = ("auto", "cython", "numpy")
LINK_KINDS = ("direct", "opcua", "modbus")
#: Links to the emulated substation when a file names none: the twin's computed measurements go
#: in-process (the plant's analog side), statuses, commands and set points over Modbus TCP on
#: 127.0.0.1 (docs/scenarios.md, "Links", has the measured costs of each choice).
DEFAULT_LINKS: tuple[str, ...] = ("direct", "modbus")
PROFILE_TABLES = ("load", "sgen")
PROFILE_MODES = ("scale", "absolute")
INTERPOLATIONS = ("linear", "step")
BUILTIN_SHAPES = ("residential", "commercial", "industrial", "pv_clear", "pv_cloudy", "ev_evening")

DEFAULT_RECORD = (
    "bus.vm_pu",
    "line.loading_percent",
    "trafo.loading_percent",
    "trafo.tap_pos",
    "switch.closed",
    "sgen.p_mw",
    "sgen.q_mvar",
    "load.p_mw",
)

_TOP_KEYS = {
    "name": "a short name (default: the file name)",
    "description": "free text",
    "grid": "a bundled grid name or a path to a grid file",
    "hardware": '"emulated", "none" (the model alone) or a path to a hardware.toml',
    "mode": " | ".join(MODES),
    "start": 'a time of day "HH:MM" or an ISO date-time',
    "duration": DURATION_HELP,
    "step": DURATION_HELP,
    "pace": " | ".join(PACES),
    "speed": "a realtime factor > 0 (2 = twice as fast as the wall clock)",
    "seed": "an integer",
    "backend": " | ".join(BACKENDS),
    "links": 'links to the emulated substation: a list of "direct", "opcua", "modbus"',
    "record": "a table [record]",
    "profile": "an array of tables [[profile]]",
    "event": "an array of tables [[event]]",
    "check": "an array of tables [[check]]",
    "sweep": "a table [sweep] (read by gridtwin sweep, see docs/sweep.md; ignored by run)",
}
_RECORD_KEYS = ("quantities", "every", "setpoints")
_PROFILE_KEYS = (
    "name",
    "table",
    "elements",
    "match",
    "type",
    "category",
    "shape",
    "csv",
    "column",
    "mode",
    "scale",
    "offset",
    "interpolation",
    "q_follows",
)

# Event kinds: kind -> (required keys, optional keys). Common keys are allowed on every kind.
_EVENT_COMMON = ("kind", "at", "when", "delay", "duration", "repeat", "label")
EVENT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "switch_open": (("element",), ()),
    "switch_close": (("element",), ()),
    "load_step": ((), ("element", "elements", "match", "delta_mw", "factor")),
    "gen_step": ((), ("element", "elements", "match", "delta_mw", "factor")),
    "line_outage": (("element",), ()),
    "line_return": (("element",), ()),
    "trafo_outage": (("element",), ()),
    "trafo_return": (("element",), ()),
    "fault": (("element",), ("current_ka", "relay_pickup_ka", "relay_delay_s")),
    "der_trip": ((), ("element", "elements", "match")),
    "der_reconnect": ((), ("element", "elements", "match")),
    "tap_change": (("element",), ("tap_pos", "delta")),
    "setpoint": (("point", "value"), ()),
    "comms_loss": (("target",), ()),
    "comms_restore": (("target",), ()),
    "device_restart": (("device",), ()),
    "meas_noise": (("point", "sigma"), ()),
    "meas_bias": (("point", "offset"), ()),
    "meas_frozen": (("point",), ()),
    "process": (("function",), ()),
}

_CHECK_COMMON = ("kind", "name", "window")
CHECK_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "voltage_band": ((), ("buses", "min_pu", "max_pu", "energized")),
    "line_loading": ((), ("lines", "max_percent")),
    "trafo_loading": ((), ("trafos", "max_percent")),
    "switch_state": (("element", "closed", "at"), ()),
    "converged": ((), ()),
    "no_stale": ((), ("points",)),
    "no_divergence": ((), ("points",)),
    "expect_alarm": (("point",), ()),
    "expect_stale": (("point",), ()),
    "field_value": (("point", "at"), ("min", "max")),
    "deadline": ((), ("max_misses",)),
}

_CONDITION = re.compile(
    r"^\s*(?P<table>[a-z_]+)\.(?P<column>[a-z_]+)\[(?P<label>[^\]]+)\]\s*"
    r"(?P<op><=|>=|<|>|==|!=)\s*(?P<value>[-+0-9.eE]+|true|false)\s*$"
)
CONDITION_HELP = (
    'a condition "<table>.<column>[<element>] <op> <number>", e.g. "bus.vm_pu[B5] > 1.05"'
)


@dataclass(frozen=True, slots=True)
class Condition:
    """A trigger on a model quantity, evaluated after every step."""

    table: str
    column: str
    element: str
    op: str
    value: float
    text: str

    def holds(self, found: float) -> bool:
        v = self.value
        return {
            "<": found < v,
            "<=": found <= v,
            ">": found > v,
            ">=": found >= v,
            "==": found == v,
            "!=": found != v,
        }[self.op]


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """A time series applied to a group of loads or generators."""

    name: str
    table: str
    elements: tuple[str, ...] = ()
    match: str | None = None
    type: str | None = None
    category: str | None = None
    shape: str | None = None
    csv: Path | None = None
    column: str = "p_mw"
    mode: str = "scale"
    scale: float = 1.0
    offset: float = 0.0
    interpolation: str = "linear"
    q_follows: bool = True
    line: int | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One scheduled or triggered action. ``params`` holds the kind's own keys."""

    kind: str
    index: int
    at: float | None = None
    when: Condition | None = None
    delay: float = 0.0
    duration: float | None = None
    repeat: bool = False
    label: str = ""
    params: tuple[tuple[str, Any], ...] = ()
    line: int | None = None

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return v
        return default

    @property
    def title(self) -> str:
        return self.label or f"event[{self.index}] {self.kind}"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One assertion over the run, restricted to a time window [start, end] in seconds."""

    kind: str
    name: str
    index: int
    window: tuple[float, float]
    params: tuple[tuple[str, Any], ...] = ()
    line: int | None = None

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return v
        return default


@dataclass(frozen=True, slots=True)
class RecordSpec:
    quantities: tuple[str, ...] = DEFAULT_RECORD
    every: int = 1  # record every n-th step
    setpoints: bool = True
    line: int | None = None  # of ``quantities`` in the file (messages of the grid checks)


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario file."""

    name: str
    path: Path | None
    grid: str
    hardware: str = "emulated"
    mode: str = "hil"
    start_sod: float = 0.0
    start_dt: _dt.datetime | None = None
    duration: float = 3600.0
    step: float = 60.0
    pace: str = "fast"
    speed: float = 1.0
    seed: int = 0
    backend: str = "auto"
    links: tuple[str, ...] = DEFAULT_LINKS
    description: str = ""
    record: RecordSpec = field(default_factory=RecordSpec)
    profiles: tuple[ProfileSpec, ...] = ()
    events: tuple[EventSpec, ...] = ()
    checks: tuple[CheckSpec, ...] = ()

    @property
    def steps(self) -> int:
        return int(round(self.duration / self.step))

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def grid_path(self) -> Path | None:
        """The grid as a file path when ``grid`` names a file, else None (a bundled name)."""
        return _as_path(self.grid, self.base_dir)

    def hardware_path(self) -> Path | None:
        if self.hardware in ("emulated", "none"):
            return None
        p = Path(self.hardware)
        return p if p.is_absolute() else self.base_dir / p


def _as_path(value: str, base: Path) -> Path | None:
    if "/" in value or "\\" in value or value.endswith((".json", ".m", ".p")):
        p = Path(value)
        return p if p.is_absolute() else base / p
    return None


# --- line lookup -----------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z_]+)\s*\]\]?")
_KEYLINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=")


class _Lines:
    """Where each key sits in the file: (section, index, key) -> line number (1-based)."""

    def __init__(self, text: str) -> None:
        self._map: dict[tuple[str, int, str], int] = {}
        self._headers: dict[tuple[str, int], int] = {}
        counters: dict[str, int] = {}
        section, index = "", 0
        for no, raw in enumerate(text.splitlines(), start=1):
            m = _HEADER.match(raw)
            if m:
                section = m.group(2)
                if m.group(1) == "[[":
                    index = counters.get(section, -1) + 1
                    counters[section] = index
                else:
                    index = 0
                self._headers[(section, index)] = no
                continue
            k = _KEYLINE.match(raw)
            if k:
                self._map.setdefault((section, index, k.group(1)), no)

    def find(self, section: str, index: int, key: str | None) -> int | None:
        if key is not None and (section, index, key) in self._map:
            return self._map[(section, index, key)]
        return self._headers.get((section, index))


# --- parsing ---------------------------------------------------------------------------------
class _Parser:
    """Parses one scenario file, collecting every problem it finds (not only the first).

    :meth:`fail` raises at the problem; :meth:`collect` around one independent piece (a key, a
    table of an array) records it and goes on, and :meth:`raise_if_any` raises them all at the
    end, in file order.
    """

    def __init__(self, path: Path | None, text: str) -> None:
        self.path = path
        self.where = str(path) if path is not None else "<scenario>"
        self.lines = _Lines(text)
        self.problems: list[ConfigError] = []

    def fail(
        self, key: str, problem: str, section: str = "", index: int = 0, sub: str | None = None
    ) -> NoReturn:
        raise ConfigError(self.where, key, problem, self.lines.find(section, index, sub))

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Record a ConfigError raised inside and go on with the next piece of the file."""
        try:
            yield
        except ConfigError as exc:
            self.problems.append(exc)

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise self.problems[0]
        found = sorted(self.problems, key=lambda e: e.line or 0)
        first = found[0]
        err = ConfigError(self.where, first.key, "", first.line)  # key, line: the first one's
        err.args = (f"{self.where}: {len(found)} problems:\n  " + "\n  ".join(map(str, found)),)
        raise err

    def unknown_keys(
        self, table: Mapping[str, Any], allowed, key_prefix: str, section: str, index: int
    ) -> None:
        bad = [k for k in table if k not in allowed]
        for k in bad[:-1]:  # every unknown key is named; the last one raises
            with self.collect():
                self._unknown(k, allowed, key_prefix, section, index)
        if bad:
            self._unknown(bad[-1], allowed, key_prefix, section, index)

    def _unknown(self, k: str, allowed, key_prefix: str, section: str, index: int) -> NoReturn:
        self.fail(
            f"{key_prefix}{k}",
            f"unknown key; allowed keys: {', '.join(sorted(allowed))}",
            section,
            index,
            k,
        )


def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file (format only; see :func:`check_against_grid`)."""
    p = Path(path)
    return loads_scenario(read_text(p, what="the scenario file"), path=p)


def loads_scenario(text: str, *, path: Path | None = None) -> Scenario:
    """Parse a scenario's TOML text.

    Raises:
        ConfigError: every problem found (one per key or table, in file order), each naming
            the key, its line and what is allowed.
    """
    ps = _Parser(path, text)
    doc = parse_toml(text, source=ps.where).data
    collect = ps.collect
    with collect():
        ps.unknown_keys(doc, _TOP_KEYS, "", "", 0)

    def top(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in doc:
            return default
        v = doc[key]
        if not isinstance(v, kind) or (isinstance(v, bool) and bool not in _astuple(kind)):
            ps.fail(key, f"expected {_TOP_KEYS[key]}, found {v!r}", "", 0, key)
        return v

    grid, name, description, hardware = "", p_stem(path), "", "emulated"
    mode, pace, backend, speed, seed = "hil", "fast", "auto", 1.0, 0
    with collect():
        if "grid" not in doc:
            ps.fail("grid", f"missing; expected {_TOP_KEYS['grid']}")
        grid = top("grid", str, "")
    with collect():
        name = top("name", str, p_stem(path))
    with collect():
        description = top("description", str, "")
    with collect():
        hardware = top("hardware", str, "emulated")
        if hardware not in ("emulated", "none"):
            hw = Path(hardware)
            base = path.parent if path is not None else Path.cwd()
            hw = hw if hw.is_absolute() else base / hw
            if not hw.is_file():
                ps.fail(
                    "hardware",
                    'expected "emulated", "none" or an existing hardware.toml, '
                    f"found no file at {hw}",
                    "",
                    0,
                    "hardware",
                )
    with collect():
        mode = _choice(ps, doc, "mode", MODES, "hil")
    with collect():
        pace = _choice(ps, doc, "pace", PACES, "fast")
    with collect():
        backend = _choice(ps, doc, "backend", BACKENDS, "auto")
    with collect():
        speed = top("speed", (int, float), 1.0)
        if speed <= 0:
            ps.fail("speed", f"expected {_TOP_KEYS['speed']}, found {speed!r}", "", 0, "speed")
    with collect():
        seed = top("seed", int, 0)

    # the run's time axis: events, checks and recording are judged against it, so they are
    # parsed only when it is right (a wrong duration would make every later time look wrong)
    n_before = len(ps.problems)
    start_sod, start_dt = parse_start("00:00")
    duration, step = 3600.0, 60.0
    with collect():
        try:
            start_sod, start_dt = parse_start(doc.get("start", "00:00"))
        except ValueError as exc:
            ps.fail("start", str(exc), "", 0, "start")
    with collect():
        duration = _duration(ps, doc, "duration", 3600.0, "", 0)
        if duration <= 0:
            ps.fail(
                "duration",
                f"expected a positive duration, found {doc.get('duration')!r}",
                "",
                0,
                "duration",
            )
    with collect():
        step = _duration(ps, doc, "step", 60.0, "", 0)
        if len(ps.problems) == n_before:
            _check_step(ps, doc, duration, step)
    time_ok = len(ps.problems) == n_before

    links: list[Any] = list(DEFAULT_LINKS)
    with collect():
        links = top("links", list, list(DEFAULT_LINKS))
        if not links or any(k not in LINK_KINDS for k in links) or len(set(links)) != len(links):
            ps.fail(
                "links",
                f"expected a list of distinct names from {', '.join(LINK_KINDS)}, found {links!r}",
                "",
                0,
                "links",
            )
        if links == ["modbus"]:
            ps.fail(
                "links",
                "Modbus cannot write the twin's measurements (input registers): use "
                '["modbus", "opcua"] or ["modbus", "direct"]',
                "",
                0,
                "links",
            )
    record = RecordSpec()
    if time_ok:
        with collect():
            record = _record(ps, doc.get("record", {}), step)
    profile_list: list[ProfileSpec] = []
    with collect():
        for i, t in enumerate(_array(ps, doc, "profile")):
            with collect():
                profile_list.append(_profile(ps, t, i, path))
    profiles = tuple(profile_list)
    names = [p.name for p in profiles]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        with collect():
            ps.fail("profile.name", f"expected unique profile names, found {sorted(dupes)} twice")
    event_list: list[EventSpec] = []
    check_list: list[CheckSpec] = []
    with collect():
        for i, t in enumerate(_array(ps, doc, "event") if time_ok else ()):
            with collect():
                event_list.append(_event(ps, t, i, start_sod, start_dt, duration))
    with collect():
        for i, t in enumerate(_array(ps, doc, "check") if time_ok else ()):
            with collect():
                check_list.append(_check(ps, t, i, start_sod, start_dt, duration))
    ps.raise_if_any()
    return Scenario(
        name=name,
        path=path,
        grid=grid,
        hardware=hardware,
        mode=mode,
        start_sod=start_sod,
        start_dt=start_dt,
        duration=duration,
        step=step,
        pace=pace,
        speed=float(speed),
        seed=seed,
        backend=backend,
        links=tuple(links),
        description=description,
        record=record,
        profiles=profiles,
        events=tuple(event_list),
        checks=tuple(check_list),
    )


def _check_step(ps: _Parser, doc: Mapping[str, Any], duration: float, step: float) -> None:
    if step <= 0 or step > duration:
        ps.fail(
            "step",
            f"expected a positive duration no longer than duration ({duration:g} s), "
            f"found {doc.get('step')!r}",
            "",
            0,
            "step",
        )
    if abs(duration / step - round(duration / step)) > 1e-9:
        ps.fail(
            "step",
            f"expected a step that divides duration ({duration:g} s) evenly, found {step:g} s",
            "",
            0,
            "step",
        )


def p_stem(path: Path | None) -> str:
    return path.stem if path is not None else "scenario"


def _astuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _choice(ps: _Parser, doc: Mapping[str, Any], key: str, allowed, default: str) -> str:
    v = doc.get(key, default)
    if v not in allowed:
        ps.fail(key, f"expected one of {', '.join(allowed)}, found {v!r}", "", 0, key)
    return v


def _duration(
    ps: _Parser,
    table: Any,
    key: str,
    default: float,
    section: str,
    index: int,
    prefix: str = "",
) -> float:
    if key not in table:
        return default
    try:
        return parse_duration(table[key])
    except ValueError as exc:
        ps.fail(prefix + key, str(exc), section, index, key)


def _time(
    ps: _Parser,
    value: Any,
    key: str,
    section: str,
    index: int,
    sub: str,
    start_sod: float,
    start_dt,
    duration: float,
) -> float:
    try:
        t = parse_time(value, start_sod, start_dt)
    except ValueError as exc:
        ps.fail(key, str(exc), section, index, sub)
    if t < 0 or t > duration + 1e-9:
        ps.fail(
            key,
            f"expected a time within the run (0 to {duration:g} s from the start), "
            f"found {value!r} = {t:g} s",
            section,
            index,
            sub,
        )
    return t


def _array(ps: _Parser, doc: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    v = doc.get(key, [])
    if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
        ps.fail(key, f"expected an array of tables [[{key}]], found {type(v).__name__}", "", 0, key)
    return v


def _record(ps: _Parser, table: Any, step: float) -> RecordSpec:
    if not isinstance(table, dict):
        ps.fail("record", f"expected a table [record], found {table!r}", "", 0, "record")
    ps.unknown_keys(table, _RECORD_KEYS, "record.", "record", 0)
    qs = table.get("quantities", list(DEFAULT_RECORD))
    if not isinstance(qs, list) or not all(isinstance(q, str) for q in qs):
        ps.fail(
            "record.quantities",
            'expected a list like ["bus.vm_pu", "line.loading_percent"]',
            "record",
            0,
            "quantities",
        )
    for q in qs:
        if not re.match(r"^[a-z_]+\.[a-z_]+(\[[^\]]+\])?$", q):
            ps.fail(
                "record.quantities",
                f'expected "<table>.<column>" or "<table>.<column>[<element>]", found {q!r}',
                "record",
                0,
                "quantities",
            )
    every_s = _duration(ps, table, "every", step, "record", 0, "record.")
    every = max(1, int(round(every_s / step)))
    setpoints = table.get("setpoints", True)
    if not isinstance(setpoints, bool):
        ps.fail(
            "record.setpoints",
            f"expected true or false, found {setpoints!r}",
            "record",
            0,
            "setpoints",
        )
    return RecordSpec(
        quantities=tuple(qs),
        every=every,
        setpoints=setpoints,
        line=ps.lines.find("record", 0, "quantities"),
    )


def _profile(ps: _Parser, t: Mapping[str, Any], i: int, path: Path | None) -> ProfileSpec:
    pre = f"profile[{i}]."
    ps.unknown_keys(t, _PROFILE_KEYS, pre, "profile", i)

    def get(key: str, kind, default):
        if key not in t:
            return default
        v = t[key]
        if not isinstance(v, kind) or (isinstance(v, bool) and bool not in _astuple(kind)):
            ps.fail(pre + key, f"expected {_kind_name(kind)}, found {v!r}", "profile", i, key)
        return v

    table = get("table", str, "load")
    if table not in PROFILE_TABLES:
        ps.fail(
            pre + "table",
            f"expected one of {', '.join(PROFILE_TABLES)}, found {table!r}",
            "profile",
            i,
            "table",
        )
    elements = get("elements", list, [])
    if not all(isinstance(e, str) for e in elements):
        ps.fail(pre + "elements", "expected a list of element names", "profile", i, "elements")
    shape = get("shape", str, None)
    csv = get("csv", str, None)
    if (shape is None) == (csv is None):
        ps.fail(
            pre + "shape",
            f"expected exactly one of shape ({', '.join(BUILTIN_SHAPES)}) or csv (a file path)",
            "profile",
            i,
            "shape",
        )
    if shape is not None and shape not in BUILTIN_SHAPES:
        ps.fail(
            pre + "shape",
            f"expected one of {', '.join(BUILTIN_SHAPES)}, found {shape!r}",
            "profile",
            i,
            "shape",
        )
    csv_path = None
    if csv is not None:
        csv_path = Path(csv)
        if not csv_path.is_absolute():
            csv_path = (path.parent if path is not None else Path.cwd()) / csv_path
        if not csv_path.is_file():
            ps.fail(
                pre + "csv",
                f"expected an existing CSV file, found no file at {csv_path}",
                "profile",
                i,
                "csv",
            )
    column = get("column", str, "p_mw")
    if column not in ("p_mw", "q_mvar"):
        ps.fail(
            pre + "column", f"expected p_mw or q_mvar, found {column!r}", "profile", i, "column"
        )
    mode = get("mode", str, "scale")
    if mode not in PROFILE_MODES:
        ps.fail(
            pre + "mode",
            f"expected one of {', '.join(PROFILE_MODES)}, found {mode!r}",
            "profile",
            i,
            "mode",
        )
    interp = get("interpolation", str, "linear")
    if interp not in INTERPOLATIONS:
        ps.fail(
            pre + "interpolation",
            f"expected one of {', '.join(INTERPOLATIONS)}, found {interp!r}",
            "profile",
            i,
            "interpolation",
        )
    if not ({"match", "type", "category"} & set(t)) and not elements:
        match = "*"
    else:
        match = get("match", str, None)
    return ProfileSpec(
        name=get("name", str, f"profile{i}"),
        table=table,
        elements=tuple(elements),
        match=match,
        type=get("type", str, None),
        category=get("category", str, None),
        shape=shape,
        csv=csv_path,
        column=column,
        mode=mode,
        scale=float(get("scale", (int, float), 1.0)),
        offset=float(get("offset", (int, float), 0.0)),
        interpolation=interp,
        q_follows=get("q_follows", bool, True),
        line=ps.lines.find("profile", i, None),
    )


def _kind_name(kind) -> str:
    names = {
        str: "a string",
        list: "a list",
        bool: "true or false",
        int: "an integer",
        float: "a number",
    }
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in _astuple(kind)))


def parse_condition(text: str) -> Condition:
    m = _CONDITION.match(text)
    if not m:
        raise ValueError(f"expected {CONDITION_HELP}, found {text!r}")
    raw = m.group("value")
    value = {"true": 1.0, "false": 0.0}.get(raw)
    if value is None:
        value = float(raw)
    return Condition(
        m.group("table"), m.group("column"), m.group("label"), m.group("op"), value, text.strip()
    )


# Parameter types per key, for every event kind (checked after the required/optional keys).
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "element": (str,),
    "elements": (list,),
    "match": (str,),
    "delta_mw": (int, float),
    "factor": (int, float),
    "current_ka": (int, float),
    "relay_pickup_ka": (int, float),
    "relay_delay_s": (int, float),
    "tap_pos": (int,),
    "delta": (int,),
    "point": (str,),
    "value": (int, float),
    "target": (str,),
    "device": (str,),
    "sigma": (int, float),
    "offset": (int, float),
    "function": (str,),
    "buses": (list,),
    "lines": (list,),
    "trafos": (list,),
    "points": (list,),
    "min_pu": (int, float),
    "max_pu": (int, float),
    "max_percent": (int, float),
    "closed": (bool,),
    "energized": (bool,),
    "min": (int, float),
    "max": (int, float),
    "max_misses": (int,),
    "label": (str,),
    "repeat": (bool,),
    "name": (str,),
}


def _params(ps: _Parser, t: Mapping[str, Any], keys, pre: str, section: str, i: int):
    out = []
    for k in keys:
        if k not in t:
            continue
        v = t[k]
        kinds = _PARAM_TYPES.get(k)
        if kinds is not None and (
            not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds)
        ):
            ps.fail(pre + k, f"expected {_kind_name(kinds)}, found {v!r}", section, i, k)
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                ps.fail(pre + k, "expected a list of names", section, i, k)
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


def _event(ps: _Parser, t: Mapping[str, Any], i: int, start_sod, start_dt, duration) -> EventSpec:
    pre = f"event[{i}]."
    kind = t.get("kind")
    if kind not in EVENT_KINDS:
        ps.fail(
            pre + "kind",
            f"expected one of {', '.join(EVENT_KINDS)}, found {kind!r}",
            "event",
            i,
            "kind",
        )
    required, optional = EVENT_KINDS[kind]
    allowed = set(_EVENT_COMMON) | set(required) | set(optional)
    ps.unknown_keys(t, allowed, pre, "event", i)
    for k in required:
        if k not in t:
            ps.fail(pre + k, f"missing; a {kind} event needs {', '.join(required)}", "event", i)
    if ("at" in t) == ("when" in t):
        ps.fail(
            pre + "at",
            f"expected exactly one of at ({TIME_HELP}) or when ({CONDITION_HELP})",
            "event",
            i,
            "at",
        )
    at = when = None
    if "at" in t:
        at = _time(ps, t["at"], pre + "at", "event", i, "at", start_sod, start_dt, duration)
    else:
        if not isinstance(t["when"], str):
            ps.fail(pre + "when", f"expected {CONDITION_HELP}", "event", i, "when")
        try:
            when = parse_condition(t["when"])
        except ValueError as exc:
            ps.fail(pre + "when", str(exc), "event", i, "when")
    delay = _duration(ps, t, "delay", 0.0, "event", i, pre)
    dur = _duration(ps, t, "duration", 0.0, "event", i, pre) if "duration" in t else None
    if kind in ("load_step", "gen_step") and not ({"delta_mw", "factor"} & set(t)):
        ps.fail(pre + "delta_mw", f"a {kind} needs delta_mw or factor", "event", i)
    if kind in ("load_step", "gen_step", "der_trip", "der_reconnect") and not (
        {"element", "elements", "match"} & set(t)
    ):
        ps.fail(pre + "element", f"a {kind} needs element, elements or match", "event", i)
    if kind == "tap_change" and ("tap_pos" in t) == ("delta" in t):
        ps.fail(pre + "tap_pos", "a tap_change needs exactly one of tap_pos or delta", "event", i)
    if kind == "process" and not re.match(r"^[\w.]+:\w+$", str(t["function"])):
        ps.fail(
            pre + "function",
            f'expected "package.module:function", found {t["function"]!r}',
            "event",
            i,
            "function",
        )
    common = _params(ps, t, ("repeat", "label"), pre, "event", i)
    cd = dict(common)
    return EventSpec(
        kind=kind,
        index=i,
        at=at,
        when=when,
        delay=delay,
        duration=dur,
        repeat=bool(cd.get("repeat", False)),
        label=str(cd.get("label", "")),
        params=_params(ps, t, tuple(required) + tuple(optional), pre, "event", i),
        line=ps.lines.find("event", i, None),
    )


def _check(ps: _Parser, t: Mapping[str, Any], i: int, start_sod, start_dt, duration) -> CheckSpec:
    pre = f"check[{i}]."
    kind = t.get("kind")
    if kind not in CHECK_KINDS:
        ps.fail(
            pre + "kind",
            f"expected one of {', '.join(CHECK_KINDS)}, found {kind!r}",
            "check",
            i,
            "kind",
        )
    required, optional = CHECK_KINDS[kind]
    ps.unknown_keys(t, set(_CHECK_COMMON) | set(required) | set(optional), pre, "check", i)
    for k in required:
        if k not in t:
            ps.fail(pre + k, f"missing; a {kind} check needs {', '.join(required)}", "check", i)
    window = (0.0, duration)
    if "window" in t:
        w = t["window"]
        if not isinstance(w, list) or len(w) != 2:
            ps.fail(
                pre + "window",
                f"expected [from, to], each {TIME_HELP}, found {w!r}",
                "check",
                i,
                "window",
            )
        a = _time(ps, w[0], pre + "window", "check", i, "window", start_sod, start_dt, duration)
        b = _time(ps, w[1], pre + "window", "check", i, "window", start_sod, start_dt, duration)
        if b < a:
            ps.fail(pre + "window", f"expected from <= to, found {w!r}", "check", i, "window")
        window = (a, b)
    params = list(_params(ps, t, [k for k in required + optional if k != "at"], pre, "check", i))
    if "at" in t:
        params.append(
            ("at", _time(ps, t["at"], pre + "at", "check", i, "at", start_sod, start_dt, duration))
        )
    name = t.get("name", f"{kind}_{i}")
    if not isinstance(name, str):
        ps.fail(pre + "name", f"expected a string, found {name!r}", "check", i, "name")
    return CheckSpec(
        kind=kind,
        name=name,
        index=i,
        window=window,
        params=tuple(params),
        line=ps.lines.find("check", i, None),
    )


#: what ``gridtwin run --inject`` may inject, and the event key its value goes to
INJECTIONS = {"meas_bias": "offset", "meas_noise": "sigma"}
#: ``--inject KIND:NAME[@TIME]``: a frozen report of a point, one device offline or back online
PLANT_FAULTS = {
    "frozen": ("meas_frozen", "point"),
    "offline": ("comms_loss", "target"),
    "online": ("comms_restore", "target"),
}


def with_injections(scenario: Scenario, specs: Sequence[str]) -> Scenario:
    """``scenario`` plus one event per ``KIND:POINT=VALUE[@TIME]`` or ``KIND:NAME[@TIME]``
    (``--inject``; :data:`INJECTIONS`, :data:`PLANT_FAULTS`).

    Raises:
        ConfigError: a spec of another form, an unknown kind, a value that is no number.
    """
    import dataclasses

    events = list(scenario.events)
    for spec in specs:
        kind, _, rest = spec.partition(":")
        name, _, rest = rest.partition("@" if kind in PLANT_FAULTS else "=")
        value, _, when = rest.partition("@") if kind in INJECTIONS else ("", "", rest)
        if not name or "=" in name or (kind in INJECTIONS) == (not value):
            if kind in INJECTIONS or kind in PLANT_FAULTS:
                kind = ""  # the form is wrong, not the kind
        if kind not in INJECTIONS and kind not in PLANT_FAULTS:
            raise ConfigError(
                "--inject",
                spec,
                f"expected KIND:POINT=VALUE[@TIME] with KIND one of {', '.join(INJECTIONS)}, "
                f"or KIND:NAME[@TIME] with KIND one of {', '.join(PLANT_FAULTS)}, "
                f"found {spec!r}",
            )
        try:
            v = float(value) if kind in INJECTIONS else 0.0
            at = parse_time(when, scenario.start_sod, scenario.start_dt) if when else 0.0
        except ValueError as exc:
            raise ConfigError("--inject", spec, f"expected a number and a time: {exc}") from None
        params: tuple[tuple[str, Any], ...]
        if kind in PLANT_FAULTS:
            event_kind, key = PLANT_FAULTS[kind]
            label, params = f"injected {kind} {name}", ((key, name),)
        else:
            event_kind = kind
            label, params = f"injected {kind} on {name}", (("point", name), (INJECTIONS[kind], v))
        events.append(
            EventSpec(kind=event_kind, index=len(events), at=float(at), label=label, params=params)
        )
    return dataclasses.replace(scenario, events=tuple(events))


def with_overrides(
    scenario: Scenario,
    *,
    duration: str | None = None,
    until: str | None = None,
    seed: int | None = None,
) -> Scenario:
    """``scenario`` with ``--duration``/``--until``/``--seed`` from the command line applied,
    validated as the file's keys are.

    A check window that covered the whole run covers the new run, one the new end cuts ends
    there; an event, a check time or a window start after the new end is an error (it would
    never be reached).

    Raises:
        ConfigError: a value of the wrong form, both ``duration`` and ``until``, a duration the
            step does not divide, an event or check time after the new end.
    """
    import dataclasses

    where = str(scenario.path) if scenario.path else "<scenario>"
    if duration is not None and until is not None:
        raise ConfigError(
            where, "--duration", "expected --duration or --until, found both on the command line"
        )
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = int(seed)
    new = None
    opt = "--duration" if duration is not None else "--until"
    if duration is not None:
        try:
            new = parse_duration(duration)
        except ValueError as exc:
            raise ConfigError(where, opt, str(exc)) from None
        if new <= 0:
            raise ConfigError(where, opt, f"expected a positive duration, found {duration!r}")
    elif until is not None:
        try:
            new = parse_time(until, scenario.start_sod, scenario.start_dt)
        except ValueError as exc:
            raise ConfigError(where, opt, str(exc)) from None
        if new <= 0:
            raise ConfigError(
                where,
                opt,
                f"expected a time after the start ({format_start(scenario)}), found {until!r}",
            )
    if new is not None:
        given = duration if duration is not None else until
        step = scenario.step
        if step > new + 1e-9 or abs(new / step - round(new / step)) > 1e-9:
            raise ConfigError(
                where,
                opt,
                f"expected a run the step ({step:g} s) divides evenly, found {given!r} = {new:g} s",
            )

        def clock(t: float) -> str:
            return format_clock(t, scenario.start_sod)

        late: list[str] = []
        for ev in scenario.events:
            if ev.at is not None and ev.at > new + 1e-9:
                late.append(f"event[{ev.index}] at {clock(ev.at)}" + _at_line(ev.line))
        checks = []
        old = scenario.duration
        for ck in scenario.checks:
            a, b = ck.window
            if abs(a) < 1e-9 and abs(b - old) < 1e-9:
                ck = dataclasses.replace(ck, window=(0.0, new))
            elif a > new + 1e-9:
                late.append(f"check[{ck.index}] window from {clock(a)}" + _at_line(ck.line))
            elif b > new + 1e-9:  # a window the shorter run enters: judged up to its end
                ck = dataclasses.replace(ck, window=(a, new))
            at = ck.param("at")
            if isinstance(at, float) and at > new + 1e-9:
                late.append(f"check[{ck.index}] at {clock(at)}" + _at_line(ck.line))
            checks.append(ck)
        if late:
            raise ConfigError(
                where,
                opt,
                f"expected a run that reaches every event and check time, found {given!r}: "
                f"the run would end at {clock(new)}, before " + ", ".join(late) + " (a longer "
                "run, or edit a copy: gridtwin scenarios copy)",
            )
        changes["duration"] = new
        changes["checks"] = tuple(checks)
    return dataclasses.replace(scenario, **changes) if changes else scenario


def _at_line(line: int | None) -> str:
    return f" (line {line})" if line else ""


def format_start(scenario: Scenario) -> str:
    if scenario.start_dt is not None:
        return scenario.start_dt.isoformat(timespec="minutes")
    s = int(scenario.start_sod)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}"
