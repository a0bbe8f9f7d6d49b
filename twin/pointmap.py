"""The point map: one description of field points for OPC UA and Modbus (no sockets here).

Each point binds a model quantity (pandapower ``table``, ``column``, ``element``) to an OPC UA
node and/or a Modbus address. Modbus addresses are 0-based protocol addresses as they travel on the
wire, stated once here; nothing adds hidden offsets anywhere else.

Direction is seen from the twin: ``to_twin`` points are read from the field and applied to the
model (statuses, setpoints and, in mirror mode, measurements); ``to_field`` points are written by
the twin (computed measurements in hil mode, commands).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twin.errors import InvalidInput, PointMapError
from twin.labels import element_label as element_label  # re-exported: the one label rule
from twin.labels import label_index, table_labels
from twin.tomlfile import KeyLines, TomlFileError, parse_toml, read_text

_log = logging.getLogger(__name__)

Direction = Literal["to_twin", "to_field"]
Kind = Literal["status", "measurement", "command", "setpoint"]
ModbusTable = Literal["coil", "discrete_input", "input_register", "holding_register"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]
WordOrder = Literal["big", "little"]

DIRECTIONS: tuple[str, ...] = ("to_twin", "to_field")
KINDS: tuple[str, ...] = ("status", "measurement", "command", "setpoint")
MODBUS_TABLES: tuple[str, ...] = ("coil", "discrete_input", "input_register", "holding_register")
DATA_TYPES: tuple[str, ...] = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64")
WORD_ORDERS: tuple[str, ...] = ("big", "little")
REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}


@dataclass(frozen=True, slots=True)
class ModbusBinding:
    """Where a point lives on Modbus.

    ``address`` is the 0-based protocol address (what a pymodbus client passes as ``address``,
    what ``mbpoll -0 -r`` takes). The value on the wire is ``raw = (value - offset) / scale``;
    the engineering value is ``raw * scale + offset``.
    """

    unit: int
    table: ModbusTable
    address: int
    dtype: DataType = "float32"
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    #: raw value that means "not available" (e.g. 0x7FFF for int16, NaN for floats)
    na_sentinel: float | int | None = None

    @property
    def count(self) -> int:
        """Number of registers (or bits, for coils and discrete inputs) the point spans."""
        if self.table in ("coil", "discrete_input"):
            return 1
        return REGISTER_COUNT[self.dtype]


@dataclass(frozen=True, slots=True)
class OpcuaBinding:
    """Where a point lives on OPC UA: a browse path under Substation/Bay/Element and its node id."""

    node_id: str  # e.g. "ns=2;s=SS1/BAY_L3/Line3/loading_percent"
    browse_path: tuple[str, ...]  # ("SS1", "BAY_L3", "Line3", "loading_percent")


@dataclass(frozen=True, slots=True)
class Point:
    """One field point.

    Attributes:
        name: unique name, e.g. ``"L3.loading_percent"``.
        table, column, element: the model binding, e.g. ``("switch", "closed", "Q12")``; element
            is a pandapower index (int) or an element name (str).
        direction: ``to_twin`` or ``to_field`` (see the module docstring).
        kind: status, measurement, command or setpoint.
        unit: engineering unit ("pu", "kV", "MW", "%", "" ...).
        low, high: limits a write must respect (None: no limit).
        plausible_min, plausible_max: the range a value read from the field must lie in to be
            taken as good (None: the default from the element's ratings,
            :func:`default_plausibility`); outside it the sync loop marks the point INVALID and
            holds its last good value.
        max_rate: largest plausible change per second of a value read from the field (None: no
            rate-of-change check).
        deadband: changes smaller than this are not reported/written.
        tolerance: divergence band in mirror mode, |field - twin| above it raises an alarm.
        interval_s: expected refresh interval; a value older than ``stale_factor * interval_s``
            is stale.
        line: line of the point's table in the TOML file it came from (for error messages).
    """

    name: str
    table: str
    column: str
    element: int | str
    direction: Direction
    kind: Kind
    unit: str = ""
    low: float | None = None
    high: float | None = None
    deadband: float = 0.0
    tolerance: float | None = None
    interval_s: float = 1.0
    modbus: ModbusBinding | None = None
    opcua: OpcuaBinding | None = None
    plausible_min: float | None = None
    plausible_max: float | None = None
    max_rate: float | None = None
    # where it came from, not what it is: two equal points may sit on different lines
    line: int | None = field(default=None, compare=False)

    @property
    def writable_by_client(self) -> bool:
        """Whether an ordinary field client (SCADA, test bench) may write the point."""
        return self.kind in ("command", "setpoint")


@dataclass(frozen=True)
class PointMap:
    """An ordered, validated set of points plus the settings they share."""

    points: tuple[Point, ...]
    substation: str = "SS1"
    namespace: str = "urn:gridtwin:substation"
    stale_factor: float = 3.0
    source: str | None = None  # the file it was read from
    grid: str | None = None  # the grid it was generated for (informative)
    mode: str | None = None  # "hil" or "mirror" when generated (informative)
    _by_name: dict[str, Point] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # first point wins on duplicate names; check_pointmap reports duplicates
        for p in self.points:
            self._by_name.setdefault(p.name, p)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def __getitem__(self, name: str) -> Point:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no point named {name!r} in the point map") from None

    def select(self, *, direction: str | None = None, kind: str | None = None) -> list[Point]:
        return [
            p
            for p in self.points
            if (direction is None or p.direction == direction) and (kind is None or p.kind == kind)
        ]


# =============================================================================================
# Model columns, device columns and element labels
# =============================================================================================

#: Column of the heartbeat point (``<substation>.heartbeat``) of a generated hil-mode map.
HEARTBEAT_COLUMN = "heartbeat"

#: Columns that exist only in the field device, never in the pandapower model: the twin never
#: applies them (docs/architecture.md, "Generated point names and kinds").
DEVICE_COLUMNS: dict[str, frozenset[str]] = {
    "switch": frozenset({"cmd", "operations"}),
    # tap_raise/tap_lower: one-step commands of a tap changer (a SCADA raise/lower), optional
    "trafo": frozenset(
        {"avr_vset_pu", "avr_band_pu", "avr_delay_s", "avr_auto", "tap_raise", "tap_lower"}
    ),
    "line": frozenset({"oc_pickup_ka", "oc_delay_s"}),
    "sgen": frozenset({"p_limit_pct", "voltvar"}),
    # the twin's heartbeat to the substation's devices (one per substation, bound to its first
    # bus only so that it has an element): a counter the device watchdogs watch (issue 11)
    "bus": frozenset({HEARTBEAT_COLUMN}),
}
#: Columns the twin computes that are neither model inputs nor load-flow results.
TWIN_COLUMNS: dict[str, frozenset[str]] = {"sgen": frozenset({"p_avail_mw"})}

# Result columns of pandapower's res_* tables (pandapower 3.5), used when a net has no res_ table
# for an element table yet.
_RESULT_COLUMNS: dict[str, frozenset[str]] = {
    "bus": frozenset({"vm_pu", "va_degree", "p_mw", "q_mvar"}),
    "line": frozenset(
        {
            "p_from_mw",
            "q_from_mvar",
            "p_to_mw",
            "q_to_mvar",
            "pl_mw",
            "ql_mvar",
            "i_from_ka",
            "i_to_ka",
            "i_ka",
            "vm_from_pu",
            "va_from_degree",
            "vm_to_pu",
            "va_to_degree",
            "loading_percent",
        }
    ),
    "trafo": frozenset(
        {
            "p_hv_mw",
            "q_hv_mvar",
            "p_lv_mw",
            "q_lv_mvar",
            "pl_mw",
            "ql_mvar",
            "i_hv_ka",
            "i_lv_ka",
            "vm_hv_pu",
            "va_hv_degree",
            "vm_lv_pu",
            "va_lv_degree",
            "loading_percent",
        }
    ),
    "switch": frozenset(
        {"i_ka", "loading_percent", "p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar"}
    ),
    "load": frozenset({"p_mw", "q_mvar"}),
    "sgen": frozenset({"p_mw", "q_mvar"}),
    "gen": frozenset({"p_mw", "q_mvar", "va_degree", "vm_pu"}),
    "ext_grid": frozenset({"p_mw", "q_mvar"}),
}


def is_device_column(table: str, column: str) -> bool:
    """True for a column that lives only in the field device (the twin never applies it)."""
    return column in DEVICE_COLUMNS.get(table, ())


def is_model_input(net: Any, table: str, column: str) -> bool:
    """True for an input column of the pandapower table (one ``GridModel.update`` accepts)."""
    try:
        return column in net[table].columns and column != "name"
    except (KeyError, AttributeError):
        return False


def known_columns(net: Any, table: str) -> frozenset[str]:
    """Every column a point may bind to for ``table``: model inputs, results, device, twin."""
    cols: set[str] = set(DEVICE_COLUMNS.get(table, ())) | set(TWIN_COLUMNS.get(table, ()))
    cols |= _RESULT_COLUMNS.get(table, frozenset())
    try:
        cols |= {str(c) for c in net[table].columns}
    except (KeyError, AttributeError):
        pass
    try:
        cols |= {str(c) for c in net["res_" + table].columns}
    except (KeyError, AttributeError):
        pass
    return frozenset(cols)


# Labels are twin.labels' rule (one rule, one place); re-exported here for the point map's users.


def _where(point: Point, source: str | None) -> str:
    src = source or "<point map>"
    return f"{src}:{point.line}" if point.line else src


def resolve_element(net: Any, point: Point, *, source: str | None = None) -> int:
    """The pandapower index of the element a point is bound to (by index or by name).

    Raises:
        PointMapError: unknown table, index not in the table, name not found or ambiguous.
    """
    table, element = point.table, point.element
    try:
        df = net[table]
    except (KeyError, AttributeError):
        raise PointMapError(
            f"{_where(point, source)}: point {point.name!r}: unknown table {table!r}"
        ) from None
    if isinstance(element, bool) or not isinstance(element, (int, str)):
        raise PointMapError(
            f"{_where(point, source)}: point {point.name!r}: element: expected an index (int) "
            f"or a name (str), found {element!r}"
        )
    if isinstance(element, int):
        if element in df.index:
            return int(element)
        raise PointMapError(
            f"{_where(point, source)}: point {point.name!r}: element: expected an index of "
            f"{table} ({len(df)} rows), found {element}"
        )
    hits: list[int] = []
    if "name" in df.columns:
        names = df["name"].to_numpy(dtype=object)
        # vectorised exact match first: this runs once per point when links are set up
        hits = [int(i) for i in df.index[names == element]]
        if not hits:  # numeric names (MATPOWER buses 1..n) match their text, "1"
            hits = [
                int(i)
                for i, n in zip(df.index, names)
                if n is not None
                and not isinstance(n, str)
                and not (isinstance(n, float) and math.isnan(n))
                and str(n) == element
            ]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        by_label = label_index(net, table).get(element)  # "<table><index>" of an unnamed one
        if by_label is not None:
            return by_label
        raise PointMapError(
            f"{_where(point, source)}: point {point.name!r}: element: expected the name of a "
            f"{table} element, found {element!r} (no {table} has that name)"
        )
    raise PointMapError(
        f"{_where(point, source)}: point {point.name!r}: element: name {element!r} is ambiguous: "
        f"{table} indices {hits}; bind by index instead"
    )


# =============================================================================================
# Plausibility of values read from the field (defaults from the element's ratings)
# =============================================================================================

#: A power, current or flow read from the field is plausible up to this many times the
#: element's rating: a meter may read above the nameplate (an overload, a profile above the
#: nominal), never ten times it. A 0.03 MW rooftop PV: |p| <= 0.3 MW.
PLAUSIBLE_RATING_FACTOR = 10.0
#: Default ranges by column, whatever the element.
PLAUSIBLE_VOLTAGE_PU = (0.0, 2.0)
PLAUSIBLE_LOADING_PERCENT = (0.0, 1000.0)
PLAUSIBLE_ANGLE_DEGREE = (-360.0, 360.0)
#: Statuses that are 0 or 1 and nothing else.
BINARY_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("switch", "closed"), ("switch", "cmd")}
    | {(t, "in_service") for t in ("line", "trafo", "load", "sgen", "gen", "storage", "ext_grid")}
)
_INJECTION_TABLES = ("load", "sgen", "gen", "storage")
_RATING_COLUMNS = ("sn_mva", "p_mw", "q_mvar", "max_p_mw", "min_p_mw", "max_q_mvar", "min_q_mvar")


@dataclass(frozen=True, slots=True)
class Plausibility:
    """The range a value read from the field must lie in, and where it came from.

    ``low``/``high`` are -inf/inf when nothing bounds that side; ``binary``: only 0 or 1;
    ``max_rate``: largest change per second (None: not checked); ``why``: for messages, e.g.
    ``"map"`` or ``"default: 10 x rating 0.03 MVA"``.
    """

    low: float
    high: float
    max_rate: float | None = None
    binary: bool = False
    why: str = ""


def _abs_finite(x: Any) -> float:
    try:
        v = abs(float(x))
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) else 0.0


class _Ratings:
    """Element ratings in MVA (or kA), computed once per net for :func:`plausibility`."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self._table_max: dict[str, float] = {}
        self._total: float | None = None
        self._element: dict[tuple[str, int], float] = {}

    def element(self, table: str, idx: int) -> float:
        """The element's rating (MVA); one computation per element, whatever its points."""
        key = (table, idx)
        if key not in self._element:
            self._element[key] = self._rate(table, idx)
        return self._element[key]

    def _rate(self, table: str, idx: int) -> float:
        net = self.net
        try:
            row = net[table].loc[idx]
        except (KeyError, AttributeError, TypeError):
            return 0.0
        if table == "line":
            try:
                vn = _abs_finite(net.bus.at[row["from_bus"], "vn_kv"])
            except (KeyError, AttributeError):
                vn = 0.0
            return math.sqrt(3.0) * vn * _abs_finite(row.get("max_i_ka"))
        if table in ("trafo", "trafo3w"):
            return max(_abs_finite(row.get(c)) for c in ("sn_mva", "sn_hv_mva"))
        if table in ("ext_grid", "bus", "switch"):
            return self.total()
        r = max(_abs_finite(row.get(c)) for c in _RATING_COLUMNS)
        s = row.get("scaling")
        if s is not None and _abs_finite(s) > 1.0:
            r *= _abs_finite(s)
        if r <= 0.0:
            r = self.table_max(table)  # a zero-rated element: the largest of its kind
        return r

    def table_max(self, table: str) -> float:
        if table not in self._table_max:
            best = 0.0
            try:
                df = self.net[table]
                for c in _RATING_COLUMNS:
                    if c in df.columns:
                        best = max([best, *(_abs_finite(v) for v in df[c].tolist())])
            except (KeyError, AttributeError, TypeError, ValueError):
                pass
            self._table_max[table] = best or self.total()
        return self._table_max[table]

    def total(self) -> float:
        """Everything that could flow: the injections' ratings plus the transformers'."""
        if self._total is None:
            tot = 0.0
            for table in _INJECTION_TABLES:
                try:
                    df = self.net[table]
                except (KeyError, AttributeError):
                    continue
                for i in df.index:
                    row = df.loc[i]
                    tot += max(_abs_finite(row.get(c)) for c in _RATING_COLUMNS)
            try:
                tot += float(self.net.trafo["sn_mva"].abs().sum())
            except (KeyError, AttributeError, TypeError, ValueError):
                pass
            self._total = tot
        return self._total


def plausibility(net: Any, point: Point, *, ratings: _Ratings | None = None) -> Plausibility:
    """The plausibility range of a value read for ``point``: the map's ``plausible_min`` /
    ``plausible_max`` where given, else the defaults from the element's ratings in ``net``
    (docs/point-map.md, "Plausibility limits"), else the point's write limits, else unbounded.

    Defaults: voltages (``vm_pu`` columns) 0..2 pu; loading 0..1000 %; angles -360..360;
    statuses 0/1; tap positions tap_min..tap_max; powers |x| <= 10 x rating (``sn_mva``,
    ``p_mw``, ``max_p_mw`` ... of the element; a line's sqrt(3) x vn x max_i_ka; a
    transformer's sn_mva; ext_grid, bus and switch flows: the grid's total); currents
    0..10 x the rated current; counters >= 0.
    """
    table, column = point.table, point.column
    lo, hi, why = -math.inf, math.inf, ""
    binary = (table, column) in BINARY_COLUMNS or (
        point.modbus is not None and point.modbus.dtype == "bool"
    )
    k = PLAUSIBLE_RATING_FACTOR
    if binary:
        lo, hi, why = 0.0, 1.0, "default: a status is 0 or 1"
    elif column.startswith("vm_") or column.endswith("vm_pu") or column == "avr_vset_pu":
        lo, hi = PLAUSIBLE_VOLTAGE_PU
        why = "default: a voltage in pu"
    elif column == "loading_percent":
        lo, hi = PLAUSIBLE_LOADING_PERCENT
        why = "default: a loading in %"
    elif column.startswith("va_") or column.endswith("_degree"):
        lo, hi = PLAUSIBLE_ANGLE_DEGREE
        why = "default: an angle in degrees"
    elif column == "operations":
        lo, why = 0.0, "default: a counter"
    elif table == "trafo" and column == "tap_pos":
        ti = _index_or_none(net, point)
        tmin = _col(net, "trafo", "tap_min", ti) if ti is not None else None
        tmax = _col(net, "trafo", "tap_max", ti) if ti is not None else None
        if tmin is not None and tmax is not None and tmin <= tmax:
            lo, hi, why = tmin, tmax, "default: tap_min..tap_max"
            tap = _col(net, "trafo", "tap_pos", ti) if ti is not None else None
            if tap is not None:  # a grid whose own tap lies outside its range: keep it usable
                lo, hi = min(lo, tap), max(hi, tap)
    else:
        rt = ratings or _Ratings(net)
        idx = _index_or_none(net, point)
        rating = 0.0
        if idx is not None and (column.endswith(("_mw", "_mvar")) or column.startswith("i_")):
            rating = rt.element(table, idx)
        if rating > 0.0 and column.endswith(("_mw", "_mvar")):
            lo, hi = -k * rating, k * rating
            why = f"default: {k:g} x rating {rating:.6g} MVA"
        elif rating > 0.0 and column.startswith("i_"):
            i_rated = _rated_current(net, table, column, idx, rating)
            if i_rated > 0.0:
                lo, hi = 0.0, k * i_rated
                why = f"default: {k:g} x rated current {i_rated:.6g} kA"
    if not why and (point.low is not None or point.high is not None):
        lo = -math.inf if point.low is None else point.low
        hi = math.inf if point.high is None else point.high
        why = "default: the point's write limits"
    if point.plausible_min is not None or point.plausible_max is not None:
        lo = lo if point.plausible_min is None else point.plausible_min
        hi = hi if point.plausible_max is None else point.plausible_max
        both = point.plausible_min is not None and point.plausible_max is not None
        why = "map" if both or not why else f"map; the other side {why}"
    return Plausibility(lo, hi, point.max_rate, binary, why)


def plausibilities(net: Any, points: Any) -> list[Plausibility]:
    """:func:`plausibility` of each point, sharing the ratings (one pass over the net)."""
    rt = _Ratings(net)
    return [plausibility(net, p, ratings=rt) for p in points]


def _index_or_none(net: Any, point: Point) -> int | None:
    try:
        return resolve_element(net, point)
    except PointMapError:
        return None


def _rated_current(net: Any, table: str, column: str, idx: int | None, rating: float) -> float:
    if idx is None:
        return 0.0
    if table == "line":
        return _abs_finite(_col(net, "line", "max_i_ka", idx))
    if table == "trafo":
        vn = _col(net, "trafo", "vn_lv_kv" if column == "i_lv_ka" else "vn_hv_kv", idx)
        return rating / (math.sqrt(3.0) * vn) if vn else 0.0
    return 0.0


# =============================================================================================
# Register codec
# =============================================================================================


class RegisterValueError(InvalidInput):
    """A value that does not fit a point's Modbus encoding (range, NaN without sentinel, ...)."""

    def __init__(self, point: Point, found: object, expected: str) -> None:
        self.point = point.name
        self.table = point.table
        self.column = point.column
        self.element = point.element
        self.found = found
        ValueError.__init__(self, f"point {point.name!r}: expected {expected}, found {found!r}")


_INT_RANGE: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
_STRUCT: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
    "float64": ">d",
}


def _words_from_bytes(data: bytes, word_order: str) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if word_order == "little" else words


def _bytes_from_words(words: list[int], word_order: str) -> bytes:
    ordered = words[::-1] if word_order == "little" else words
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def encode_registers(point: Point, value: float) -> list[int]:
    """Engineering value -> the registers (or one bit, 0/1, for bools) on the wire.

    The one register codec: the Modbus link and the emulator's Modbus server both use it. It
    packs with ``struct`` because ``twin/`` imports no pymodbus (the layer rule); the tests
    check it word for word against pymodbus's ``convert_to_registers``/``convert_from_registers``
    (3.16: ``word_order="big" | "little"``) for every dtype and word order.

    ``raw = (value - offset) / scale``, rounded for integer types. NaN becomes the point's
    not-available sentinel when it has one, else IEEE NaN for float types.

    Raises:
        RegisterValueError: no Modbus binding, raw value out of the type's range, NaN for an
            integer type without a sentinel, or infinity.
    """
    mb = point.modbus
    if mb is None:
        raise RegisterValueError(point, None, "a point with a Modbus binding")
    dtype = mb.dtype
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RegisterValueError(point, value, "a number") from None
    if dtype == "bool":
        if math.isnan(v):
            if mb.na_sentinel is not None:
                return [1 if mb.na_sentinel else 0]
            raise RegisterValueError(point, value, "0 or 1 (a bool has no not-available value)")
        return [1 if v != 0.0 else 0]
    if math.isnan(v):
        raw: float | int
        if mb.na_sentinel is not None and not (
            isinstance(mb.na_sentinel, float) and math.isnan(mb.na_sentinel)
        ):
            raw = mb.na_sentinel
        elif dtype in ("float32", "float64"):
            raw = math.nan
        else:
            raise RegisterValueError(
                point, value, f"a finite value ({dtype} without a not-available sentinel)"
            )
    else:
        if math.isinf(v):
            raise RegisterValueError(point, value, "a finite value")
        raw = (v - mb.offset) / mb.scale
    if dtype in _INT_RANGE:
        lo, hi = _INT_RANGE[dtype]
        if isinstance(raw, float) and not math.isfinite(raw):
            raise RegisterValueError(point, value, f"a finite raw value for {dtype}")
        iraw = int(round(raw))
        if not lo <= iraw <= hi:
            raise RegisterValueError(
                point,
                value,
                f"a raw {dtype} value in [{lo}, {hi}] (raw = (value - {mb.offset:g}) / "
                f"{mb.scale:g} = {iraw})",
            )
        data = struct.pack(_STRUCT[dtype], iraw)
    else:
        if dtype == "float32" and math.isfinite(raw) and abs(raw) > _FLOAT32_MAX:
            raise RegisterValueError(
                point, value, f"a raw float32 value within +-{_FLOAT32_MAX:.4g}"
            )
        data = struct.pack(_STRUCT[dtype], raw)
    return _words_from_bytes(data, mb.word_order)


_FLOAT32_MAX = 3.4028234663852886e38


def decode_registers(point: Point, regs: list[int] | tuple[int, ...]) -> float:
    """Registers (or one bit for bools) -> engineering value; NaN for the not-available sentinel.

    Raises:
        RegisterValueError: wrong register count or a register outside 0..65535.
    """
    mb = point.modbus
    if mb is None:
        raise RegisterValueError(point, None, "a point with a Modbus binding")
    dtype = mb.dtype
    n = 1 if dtype == "bool" else REGISTER_COUNT[dtype]
    words = list(regs)
    if len(words) != n:
        raise RegisterValueError(point, words, f"{n} register(s) for {dtype}")
    for w in words:
        if isinstance(w, bool):
            w = int(w)
        if not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise RegisterValueError(point, words, "registers in 0..65535")
    if dtype == "bool":
        bit = 1 if words[0] else 0
        if mb.na_sentinel is not None and bit == int(bool(mb.na_sentinel)):
            return math.nan
        return float(bit)
    (raw,) = struct.unpack(
        _STRUCT[dtype], _bytes_from_words([int(w) for w in words], mb.word_order)
    )
    sentinel = mb.na_sentinel
    if sentinel is not None and not (isinstance(sentinel, float) and math.isnan(sentinel)):
        if dtype == "float32":
            # compare in float32 precision: the sentinel went through the same rounding
            (s32,) = struct.unpack(">f", struct.pack(">f", float(sentinel)))
            if raw == s32:
                return math.nan
        elif raw == sentinel:
            return math.nan
    if isinstance(raw, float) and math.isnan(raw):
        return math.nan
    return float(raw) * mb.scale + mb.offset


# --- block codec: many points of one table at once ---------------------------------------------

#: dtype -> the big-endian numpy type its registers hold
_NP_BE: dict[str, str] = {
    "int16": ">i2",
    "uint16": ">u2",
    "int32": ">i4",
    "uint32": ">u4",
    "float32": ">f4",
    "float64": ">f8",
}
#: widest point in registers: a block's rows are this wide, unused words zero
BLOCK_WIDTH = 4


class BlockCodec:
    """:func:`encode_registers` / :func:`decode_registers` for many points at once.

    Built once for a fixed tuple of points with Modbus bindings; :meth:`encode` and
    :meth:`decode` take the points' values (or registers) as arrays and work per data type
    and word order with numpy byte views, giving word for word what the per-point functions
    give (the tests compare them on every dtype, word order, scale, offset and sentinel).
    A row of registers is :data:`BLOCK_WIDTH` words wide; point ``k`` uses the first
    ``count[k]`` of its row.

    Raises:
        RegisterValueError: a point without a Modbus binding.
    """

    def __init__(self, points: tuple[Point, ...] | list[Point]) -> None:
        self.points: tuple[Point, ...] = tuple(points)
        n = len(self.points)
        bindings: list[ModbusBinding] = []
        for p in self.points:
            if p.modbus is None:
                raise RegisterValueError(p, None, "a point with a Modbus binding")
            bindings.append(p.modbus)
        #: registers of each point (1 for bools)
        self.count = np.array(
            [1 if b.dtype == "bool" else REGISTER_COUNT[b.dtype] for b in bindings], dtype=np.intp
        )
        self.scale = np.array([b.scale for b in bindings], dtype=np.float64)
        self.offset = np.array([b.offset for b in bindings], dtype=np.float64)
        # a sentinel other than NaN (NaN sentinels are IEEE NaN: no raw value to substitute)
        self._has_na = np.array(
            [
                b.na_sentinel is not None
                and not (isinstance(b.na_sentinel, float) and math.isnan(b.na_sentinel))
                for b in bindings
            ],
            dtype=bool,
        )
        self._na_raw = np.array(
            [float(b.na_sentinel or 0.0) if h else 0.0 for b, h in zip(bindings, self._has_na)],
            dtype=np.float64,
        )
        self._bool_na = np.array(
            [b.na_sentinel is not None for b in bindings], dtype=bool
        )  # a bool's sentinel of any kind (its truth is the not-available bit)
        self._bool_na_bit = np.array([1 if b.na_sentinel else 0 for b in bindings], dtype=np.uint16)
        groups: dict[tuple[str, str], list[int]] = {}
        for k, b in enumerate(bindings):
            groups.setdefault((b.dtype, b.word_order), []).append(k)
        #: point index -> its (dtype, word order) group id; the groups' keys
        self._keys: list[tuple[str, str]] = list(groups)
        self._group = np.zeros(n, dtype=np.intp)
        for g, key in enumerate(self._keys):
            self._group[groups[key]] = g

    def __len__(self) -> int:
        return len(self.points)

    def _split(self, idx: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        """``idx`` (positions in ``idx``, not point indices) per group present."""
        g = self._group[idx]
        if g.size and (g == g[0]).all():
            dtype, order = self._keys[int(g[0])]
            return [(dtype, order, np.arange(idx.size))]
        out = []
        for gid in np.unique(g).tolist():
            dtype, order = self._keys[gid]
            out.append((dtype, order, np.flatnonzero(g == gid)))
        return out

    def encode(
        self, values: np.ndarray, idx: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Registers of points ``idx`` (all when None) holding ``values`` (one per entry).

        Returns:
            ``(words, fits)``: uint16 rows (``len(idx)`` x :data:`BLOCK_WIDTH`) and whether
            each value has an encoding; where ``fits`` is False the row is zeros and
            :func:`encode_registers` would raise :class:`RegisterValueError`.
        """
        if idx is None:
            idx = np.arange(len(self.points))
        idx = np.asarray(idx, dtype=np.intp)
        v = np.asarray(values, dtype=np.float64)
        if v.shape != idx.shape:
            raise ValueError(f"encode: expected {idx.size} values, found {v.shape}")
        m = idx.size
        words = np.zeros((m, BLOCK_WIDTH), dtype=np.uint16)
        fits = np.ones(m, dtype=bool)
        for dtype, order, sub in self._split(idx):
            pts = idx[sub]
            x = v[sub]
            nan = np.isnan(x)
            if dtype == "bool":
                bits = (x != 0.0).astype(np.uint16)
                if nan.any():
                    has = self._bool_na[pts]
                    bits[nan] = self._bool_na_bit[pts][nan]
                    fits[sub[nan & ~has]] = False
                    bits[nan & ~has] = 0
                words[sub, 0] = bits
                continue
            ok = ~np.isinf(x)
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                raw = (x - self.offset[pts]) / self.scale[pts]
            if nan.any():
                has = self._has_na[pts]
                raw = np.where(nan & has, self._na_raw[pts], raw)
                raw = np.where(nan & ~has, np.nan, raw)
                if dtype not in ("float32", "float64"):
                    ok &= ~(nan & ~has)
            if dtype in _INT_RANGE:
                lo, hi = _INT_RANGE[dtype]
                ok &= np.isfinite(raw)
                r = np.rint(np.where(ok, raw, 0.0))
                ok &= (r >= lo) & (r <= hi)
                r = np.where(ok, r, 0.0).astype(np.int64)
                packed = r.astype(_NP_BE[dtype])
            else:
                if dtype == "float32":
                    with np.errstate(invalid="ignore"):
                        ok &= ~(np.isfinite(raw) & (np.abs(raw) > _FLOAT32_MAX))
                packed = np.where(ok, raw, 0.0).astype(_NP_BE[dtype])
            k = REGISTER_COUNT[dtype]
            w = packed.view(">u2").reshape(-1, k)
            if order == "little":
                w = w[:, ::-1]
            words[sub, :k] = np.where(ok[:, None], w, 0)
            fits[sub] = ok
        return words, fits

    def decode(self, words: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        """Engineering values of points ``idx`` (all when None) from their register rows
        (``len(idx)`` x at least ``max(count)``; a row's words past the point's count are
        ignored); NaN for a not-available sentinel, as :func:`decode_registers`.

        Raises:
            RegisterValueError: a register outside 0..65535 (the first such point).
        """
        if idx is None:
            idx = np.arange(len(self.points))
        idx = np.asarray(idx, dtype=np.intp)
        w = np.asarray(words)
        if w.ndim != 2 or w.shape[0] != idx.size:
            raise ValueError(f"decode: expected {idx.size} register rows, found {w.shape}")
        if w.size:
            cols = np.arange(w.shape[1])
            used = cols[None, :] < self.count[idx][:, None]
            bad = used & ((w < 0) | (w > 0xFFFF))
            if bad.any():
                k = int(np.flatnonzero(bad.any(axis=1))[0])
                p = self.points[int(idx[k])]
                raise RegisterValueError(
                    p, w[k, : self.count[idx[k]]].tolist(), "registers in 0..65535"
                )
        out = np.empty(idx.size, dtype=np.float64)
        for dtype, order, sub in self._split(idx):
            pts = idx[sub]
            if dtype == "bool":
                bit = (w[sub, 0] != 0).astype(np.uint16)
                na = self._bool_na[pts] & (bit == self._bool_na_bit[pts])
                out[sub] = np.where(na, np.nan, bit.astype(np.float64))
                continue
            k = REGISTER_COUNT[dtype]
            rows = w[sub, :k].astype(np.uint16)
            if order == "little":
                rows = rows[:, ::-1]
            be = np.ascontiguousarray(rows).astype(">u2")
            raw = be.view(_NP_BE[dtype]).reshape(-1)
            with np.errstate(invalid="ignore"):  # a signalling-NaN pattern stays NaN
                rawf = raw.astype(np.float64)
            has = self._has_na[pts]
            if dtype == "float32":
                s32 = self._na_raw[pts].astype(np.float32).astype(np.float64)
                na = has & (rawf == s32)
            else:
                na = has & (rawf == self._na_raw[pts])
            val = rawf * self.scale[pts] + self.offset[pts]
            out[sub] = np.where(na | np.isnan(rawf), np.nan, val)
        return out

    def reader(
        self, offsets: Sequence[int] | np.ndarray, idx: np.ndarray | None = None
    ) -> BlockReader:
        """A prepared :meth:`decode` for one fixed read block: points ``idx`` (all when None)
        whose registers start at ``offsets`` in the block's register array.

        :meth:`BlockReader.decode` takes that 1-D array as it came (a response's words) and
        gives what :meth:`decode` gives for the same registers, with the per-type work
        (grouping, word order, scale, sentinels) resolved here once.
        """
        return BlockReader(self, offsets, idx)


class BlockReader:
    """:meth:`BlockCodec.decode` for a fixed block layout (see :meth:`BlockCodec.reader`)."""

    def __init__(
        self, codec: BlockCodec, offsets: Sequence[int] | np.ndarray, idx: np.ndarray | None
    ) -> None:
        if idx is None:
            idx = np.arange(len(codec))
        idx = np.asarray(idx, dtype=np.intp)
        off = np.asarray(offsets, dtype=np.intp)
        if off.shape != idx.shape:
            raise ValueError(f"reader: expected {idx.size} offsets, found {off.shape}")
        self.size = int(idx.size)
        #: per group: (dtype, output positions, word index columns most significant first,
        #: scale, offset, sentinel mask or None, sentinel values, bool sentinel bits)
        self._groups: list[tuple[Any, ...]] = []
        for dtype, order, sub in codec._split(idx):
            pts = idx[sub]
            o = off[sub]
            if dtype == "bool":
                na = codec._bool_na[pts]
                self._groups.append(
                    (dtype, sub, [o], None, None, na if na.any() else None, None,
                     codec._bool_na_bit[pts])
                )  # fmt: skip
                continue
            k = REGISTER_COUNT[dtype]
            cols = [o + j for j in range(k)]
            if order == "little":
                cols = cols[::-1]
            has = codec._has_na[pts]
            na_raw = codec._na_raw[pts]
            if dtype == "float32":
                na_raw = na_raw.astype(np.float32).astype(np.float64)
            self._groups.append(
                (dtype, sub, cols, codec.scale[pts], codec.offset[pts],
                 has if has.any() else None, na_raw, None)
            )  # fmt: skip

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Engineering values of the block's points from its register array (uint16 values;
        NaN for a not-available sentinel, as :func:`decode_registers`)."""
        w = np.asarray(words, dtype=np.uint16)
        out = np.empty(self.size, dtype=np.float64)
        for dtype, sub, cols, scale, offset, has, na_raw, na_bit in self._groups:
            if dtype == "bool":
                bit = (w[cols[0]] != 0).astype(np.uint16)
                val = bit.astype(np.float64)
                if has is not None:
                    val[has & (bit == na_bit)] = np.nan
                out[sub] = val
                continue
            if len(cols) == 1:
                raw = w[cols[0]]
                if dtype == "int16":
                    raw = raw.view(np.int16)
            elif len(cols) == 2:
                u = (w[cols[0]].astype(np.uint32) << 16) | w[cols[1]]
                raw = u.view({"int32": np.int32, "uint32": np.uint32, "float32": np.float32}[dtype])
            else:
                u64 = w[cols[0]].astype(np.uint64)
                for c in cols[1:]:
                    u64 = (u64 << np.uint64(16)) | w[c]
                raw = u64.view(np.float64)
            with np.errstate(invalid="ignore"):  # a signalling-NaN pattern stays NaN
                rawf = raw.astype(np.float64)
            val = rawf * scale + offset
            if has is not None:
                bad = has & (rawf == na_raw)
                if dtype in ("float32", "float64"):
                    bad |= np.isnan(rawf)
                val = np.where(bad, np.nan, val)
            elif dtype in ("float32", "float64"):
                val = np.where(np.isnan(rawf), np.nan, val)
            out[sub] = val
        return out


# =============================================================================================
# Generator
# =============================================================================================

_REGS_PER_UNIT = 65536
_MAX_UNIT = 247  # highest unicast Modbus unit id


@dataclass(slots=True)
class _Spec:
    table: str
    column: str
    idx: int
    label: str
    element: int | str
    kind: Kind
    direction: Direction
    unit: str
    mb_table: ModbusTable
    dtype: DataType
    low: float | None = None
    high: float | None = None
    deadband: float = 0.0
    tolerance: float | None = None
    na: float | int | None = None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _col(net: Any, table: str, column: str, idx: int) -> float | None:
    df = net[table]
    return _finite(df.at[idx, column]) if column in df.columns else None


class _Columns:
    """A net's columns read once each as {index: finite float or None} (a pandas ``.at`` per
    element and column cost ~10 us: 0.7 s of a 90k-point map)."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self._cols: dict[tuple[str, str], dict[int, float | None]] = {}

    def __call__(self, table: str, column: str, idx: int) -> float | None:
        col = self._cols.get((table, column))
        if col is None:
            df = self.net[table]
            if column in df.columns:
                col = {int(i): _finite(v) for i, v in zip(df.index, df[column].tolist())}
            else:
                col = {}
            self._cols[(table, column)] = col
        return col.get(int(idx))


@contextlib.contextmanager
def _gc_paused() -> Any:
    """No cyclic collection while a large map is built: its ~10 objects per point are none of
    them garbage, and the collector would scan them again and again (a third of the time)."""
    on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if on:
            gc.enable()


def _tol(nominal: float | None, frac: float = 0.1, floor: float = 1e-3) -> float:
    # Divergence band: a share of the element's size, never below ``floor``.
    return round(max(floor, frac * abs(nominal or 0.0)), 6)


def _element_specs(net: Any, mode: str, labels: dict[str, dict[int, str]]) -> list[_Spec]:
    meas_dir: Direction = "to_field" if mode == "hil" else "to_twin"
    specs: list[_Spec] = []
    cell = _Columns(net)

    def add(
        table: str,
        idx: int,
        column: str,
        kind: Kind,
        direction: Direction,
        unit: str,
        mb_table: ModbusTable,
        dtype: DataType,
        **kw: Any,
    ) -> None:
        label = labels[table][idx]
        # Bind by name when the label is the name (readable, survives re-indexing), else index.
        element: int | str = label if label != f"{table}{idx}" else idx
        specs.append(
            _Spec(table, column, idx, label, element, kind, direction, unit, mb_table, dtype, **kw)
        )

    def meas(table: str, idx: int, column: str, unit: str, **kw: Any) -> None:
        # a computed measurement: an input register, float32, to the field in hil mode
        add(table, idx, column, "measurement", meas_dir, unit, "input_register", "float32", **kw)

    def present(table: str) -> list[int]:
        return [int(i) for i in net[table].index] if table in net and len(net[table]) else []

    for i in present("switch"):
        add("switch", i, "closed", "status", "to_twin", "", "discrete_input", "bool")
        add("switch", i, "cmd", "command", "to_field", "", "coil", "bool", low=0.0, high=1.0)
        add("switch", i, "operations", "measurement", "to_twin", "", "input_register", "uint16")
    for i in present("trafo"):
        tap_pos = cell("trafo", "tap_pos", i)
        tap_min = cell("trafo", "tap_min", i)
        tap_max = cell("trafo", "tap_max", i)
        # A trafo has a tap changer when its tap_pos is set (tap_min/max may be missing,
        # as in MATPOWER-derived cases: then the status has no limits).
        if tap_pos is not None:
            add(
                "trafo",
                i,
                "tap_pos",
                "status",
                "to_twin",
                "",
                "input_register",
                "int16",
                low=tap_min,
                high=tap_max,
                na=32767,
            )
            add(
                "trafo",
                i,
                "avr_vset_pu",
                "setpoint",
                "to_field",
                "pu",
                "holding_register",
                "float32",
                low=0.9,
                high=1.1,
            )
            add(
                "trafo",
                i,
                "avr_band_pu",
                "setpoint",
                "to_field",
                "pu",
                "holding_register",
                "float32",
                low=0.005,
                high=0.05,
            )
            add(
                "trafo",
                i,
                "avr_delay_s",
                "setpoint",
                "to_field",
                "s",
                "holding_register",
                "float32",
                low=0.0,
                high=300.0,
            )
            add(
                "trafo",
                i,
                "avr_auto",
                "setpoint",
                "to_field",
                "",
                "holding_register",
                "uint16",
                low=0.0,
                high=1.0,
            )
            # a SCADA raise/lower: write 1, the tap changer makes one step (in manual mode)
            # and resets the command to 0
            for col in ("tap_raise", "tap_lower"):
                add("trafo", i, col, "command", "to_field", "", "coil", "bool", low=0.0, high=1.0)
        sn = cell("trafo", "sn_mva", i)
        meas("trafo", i, "loading_percent", "%", deadband=0.1, tolerance=10.0)
        meas("trafo", i, "p_hv_mw", "MW", deadband=0.001, tolerance=_tol(sn))
        meas("trafo", i, "q_hv_mvar", "Mvar", deadband=0.001, tolerance=_tol(sn))
    for i in present("bus"):
        meas("bus", i, "vm_pu", "pu", deadband=0.0005, tolerance=0.02)
    relay_lines: set[int] = set()
    if "switch" in net and len(net.switch):
        sw = net.switch
        relay_lines = {int(e) for e, et in zip(sw["element"], sw["et"]) if et == "l"}
    for i in present("line"):
        imax = cell("line", "max_i_ka", i)
        fb = cell("line", "from_bus", i)
        vn = cell("bus", "vn_kv", int(fb)) if fb is not None else None
        s_nom = imax * vn * math.sqrt(3.0) if imax and vn else None
        meas("line", i, "i_ka", "kA", deadband=0.001, tolerance=_tol(imax))
        meas("line", i, "loading_percent", "%", deadband=0.1, tolerance=10.0)
        meas("line", i, "p_from_mw", "MW", deadband=0.001, tolerance=_tol(s_nom))
        meas("line", i, "q_from_mvar", "Mvar", deadband=0.001, tolerance=_tol(s_nom))
        if i in relay_lines:
            high = round(20.0 * imax, 6) if imax else 100.0
            add(
                "line",
                i,
                "oc_pickup_ka",
                "setpoint",
                "to_field",
                "kA",
                "holding_register",
                "float32",
                low=0.0,
                high=high,
            )
            add(
                "line",
                i,
                "oc_delay_s",
                "setpoint",
                "to_field",
                "s",
                "holding_register",
                "float32",
                low=0.0,
                high=10.0,
            )
    for i in present("load"):
        nom = cell("load", "sn_mva", i) or max(
            abs(cell("load", "p_mw", i) or 0.0), abs(cell("load", "q_mvar", i) or 0.0)
        )
        for col, u in (("p_mw", "MW"), ("q_mvar", "Mvar")):
            meas("load", i, col, u, deadband=0.001, tolerance=_tol(nom))
    for i in present("sgen"):
        nom = cell("sgen", "sn_mva", i) or abs(cell("sgen", "p_mw", i) or 0.0)
        for col, u in (("p_mw", "MW"), ("q_mvar", "Mvar")):
            add(
                "sgen",
                i,
                col,
                "status",
                "to_twin",
                u,
                "input_register",
                "float32",
                deadband=0.001,
                tolerance=_tol(nom),
            )
        meas("sgen", i, "p_avail_mw", "MW", deadband=0.001, tolerance=_tol(nom))
        add(
            "sgen",
            i,
            "p_limit_pct",
            "setpoint",
            "to_field",
            "%",
            "holding_register",
            "float32",
            low=0.0,
            high=100.0,
        )
        add(
            "sgen",
            i,
            "voltvar",
            "setpoint",
            "to_field",
            "",
            "holding_register",
            "uint16",
            low=0.0,
            high=1.0,
        )
    total_load = float(net.load["p_mw"].abs().sum()) if "load" in net and len(net.load) else 0.0
    for table in ("gen", "ext_grid"):
        for i in present(table):
            nom = (
                cell(table, "sn_mva", i) or abs(cell(table, "p_mw", i) or 0.0)
                if table == "gen"
                else total_load
            )
            for col, u in (("p_mw", "MW"), ("q_mvar", "Mvar")):
                meas(table, i, col, u, deadband=0.001, tolerance=_tol(nom))
    return specs


def generate_pointmap(
    net: Any,
    *,
    mode: str = "hil",
    substation: str = "SS1",
    unit: int = 1,
    interval_s: float = 1.0,
) -> PointMap:
    """A full point map for a grid, laid out as an RTU would be.

    One block per Modbus table and unit, from address 0: coils (commands), discrete inputs
    (statuses), input registers (float32 measurements and statuses first, all at even addresses,
    then 16-bit integers), holding registers (float32 setpoints, then 16-bit). Big word order.
    A table that would pass 65535 continues at address 0 of the next unit id (unit+1, ...).

    Args:
        net: the pandapower net.
        mode: ``"hil"`` (the twin writes measurements) or ``"mirror"`` (the twin reads them).
        substation: first element of every browse path / node id.
        unit: first Modbus unit id.
    """
    if mode not in ("hil", "mirror"):
        raise PointMapError(f"mode: expected one of hil, mirror, found {mode!r}")
    if not 0 <= unit <= _MAX_UNIT:
        raise PointMapError(f"unit: expected a Modbus unit id in 0..{_MAX_UNIT}, found {unit!r}")
    if not substation or "/" in substation:
        raise PointMapError(
            f"substation: expected a non-empty name without '/', found {substation!r}"
        )
    tables = [
        t
        for t in ("switch", "trafo", "bus", "line", "load", "sgen", "gen", "ext_grid")
        if t in net and len(net[t])
    ]
    labels = {t: table_labels(net, t) for t in tables}
    # A name used in two tables (a load and an sgen both called "X") would give two points
    # named "X.p_mw": fall back to <table><index> for those elements.
    owners: dict[str, set[str]] = {}
    for t, lab in labels.items():
        for lbl in lab.values():
            owners.setdefault(lbl, set()).add(t)
    for t, lab in labels.items():
        for i, lbl in lab.items():
            if len(owners[lbl]) > 1 and lbl != f"{t}{i}":
                _log.info(
                    "label %r is used in %s: %s %d falls back to its index",
                    lbl,
                    sorted(owners[lbl]),
                    t,
                    i,
                )
                lab[i] = f"{t}{i}"
    with _gc_paused():
        return _generate(net, mode, substation, unit, interval_s, labels, tables)


def _generate(
    net: Any,
    mode: str,
    substation: str,
    unit: int,
    interval_s: float,
    labels: dict[str, dict[int, str]],
    tables: list[str],
) -> PointMap:
    specs = _element_specs(net, mode, labels)
    if mode == "hil" and "bus" in tables:
        # last in the spec list: every other point keeps the address it had before
        b0 = int(net.bus.index[0])
        lbl = labels["bus"][b0]
        specs.append(
            _Spec(
                "bus",
                HEARTBEAT_COLUMN,
                b0,
                substation,
                lbl if lbl != f"bus{b0}" else b0,
                "setpoint",
                "to_field",
                "",
                "holding_register",
                "uint16",
                low=0.0,
                high=65535.0,
            )
        )

    # Address allocation: per Modbus table, multi-register values first (they stay aligned on
    # even addresses), then single registers / bits.
    addr: dict[int, tuple[int, int]] = {}
    for mb_table in MODBUS_TABLES:
        group = [k for k, s in enumerate(specs) if s.mb_table == mb_table]
        group.sort(key=lambda k: -_count(specs[k]))  # stable: keeps element order within a width
        cur_unit, cur = unit, 0
        for k in group:
            n = _count(specs[k])
            if n > 1 and cur % 2:
                cur += 1
            if cur + n > _REGS_PER_UNIT:
                cur_unit, cur = cur_unit + 1, 0
                if cur_unit > _MAX_UNIT:
                    raise PointMapError(
                        f"grid too large: {mb_table} addresses need more than unit ids "
                        f"{unit}..{_MAX_UNIT}"
                    )
            addr[k] = (cur_unit, cur)
            cur += n
    points = []
    for k, s in enumerate(specs):
        u, a = addr[k]
        bay = f"BAY_{s.label}"
        path = (substation, bay, s.label, s.column)
        points.append(
            Point(
                name=f"{s.label}.{s.column}",
                table=s.table,
                column=s.column,
                element=s.element,
                direction=s.direction,
                kind=s.kind,
                unit=s.unit,
                low=s.low,
                high=s.high,
                deadband=s.deadband,
                tolerance=s.tolerance,
                interval_s=interval_s,
                modbus=ModbusBinding(
                    unit=u, table=s.mb_table, address=a, dtype=s.dtype, na_sentinel=s.na
                ),
                opcua=OpcuaBinding(node_id="ns=2;s=" + "/".join(path), browse_path=path),
            )
        )
    name = None
    try:
        name = str(net.name) if getattr(net, "name", None) else None
    except Exception:  # pandapower nets may lack a usable name
        name = None
    return PointMap(points=tuple(points), substation=substation, grid=name, mode=mode)


def _count(s: _Spec) -> int:
    return 1 if s.mb_table in ("coil", "discrete_input") else REGISTER_COUNT[s.dtype]


# =============================================================================================
# TOML: reading, writing
# =============================================================================================

_TOP_KEYS = (
    "substation",
    "namespace",
    "stale_factor",
    "grid",
    "mode",
    "modbus_unit",
    "word_order",
    "interval_s",
    "point",
)
_POINT_KEYS = (
    "name",
    "bind",
    "direction",
    "kind",
    "unit",
    "low",
    "high",
    "deadband",
    "tolerance",
    "interval_s",
    "plausible_min",
    "plausible_max",
    "max_rate",
    "modbus",
    "opcua",
)
_MODBUS_KEYS = ("unit", "table", "address", "type", "word_order", "scale", "offset", "na")
_OPCUA_KEYS = ("node_id", "browse_path")
_MAX_UNIT_ID = 255  # Modbus TCP carries the unit id in one byte

_BIND_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\[\s*(.*?)\s*\]\s*$")
_NODE_RE = re.compile(r"^ns=(\d+);([isgb])=(.+)$")


class _Lines:
    """Line numbers of a point map's keys (:class:`twin.tomlfile.KeyLines`, the one scanner)."""

    def __init__(self, text: str) -> None:
        self._kl = KeyLines(text)
        self.top = _TopLines(self._kl)

    def point(self, i: int) -> int | None:
        return self._kl.exact(("point", i))

    def key(self, i: int, sub: str, key: str) -> int | None:
        path: tuple[str | int, ...] = ("point", i, sub, key) if sub else ("point", i, key)
        return self._kl.line(path) if self.point(i) is not None else None


class _TopLines:
    """``get(key)``: the line of a top-level key (None: not written)."""

    def __init__(self, kl: KeyLines) -> None:
        self._kl = kl

    def get(self, key: str) -> int | None:
        return self._kl.exact((key,))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt_allowed(allowed: tuple[str, ...] | list[str]) -> str:
    return "one of " + ", ".join(allowed)


class _Reader:
    """Validates one parsed document, collecting every problem with file, line, point and key."""

    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[str] = []

    def err(self, line: int | None, who: str | None, key: str, msg: str) -> None:
        where = f"{self.source}:{line}" if line else self.source
        pt = f"point {who!r}: " if who else ""
        self.problems.append(f"{where}: {pt}{key}: {msg}")

    # -- typed getters: return the value, or the default after recording a problem ----------
    def get(
        self,
        d: dict,
        key: str,
        kind: str,
        default: Any,
        line: int | None,
        who: str | None,
        *,
        required: bool = False,
        allowed: tuple[str, ...] | None = None,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
        label: str | None = None,
    ) -> Any:
        label = label or key
        if key not in d:
            if required:
                self.err(line, who, label, f"missing (expected {self._expect(kind, allowed)})")
            return default
        v = d[key]
        ok = {
            "str": isinstance(v, str),
            "int": isinstance(v, int) and not isinstance(v, bool),
            "num": _is_num(v),
        }[kind]
        if not ok:
            self.err(line, who, label, f"expected {self._expect(kind, allowed)}, found {v!r}")
            return default
        if allowed is not None and v not in allowed:
            self.err(line, who, label, f"expected {_fmt_allowed(allowed)}, found {v!r}")
            return default
        if kind in ("int", "num"):
            if kind == "num" and not math.isfinite(v):
                self.err(line, who, label, f"expected a finite number, found {v!r}")
                return default
            if positive and v <= 0:
                self.err(line, who, label, f"expected a number > 0, found {v!r}")
                return default
            if (low is not None and v < low) or (high is not None and v > high):
                self.err(
                    line,
                    who,
                    label,
                    f"expected a value in [{low:g}, {high:g}], found {v!r}"
                    if low is not None and high is not None
                    else f"expected a value >= {low:g}, found {v!r}",
                )
                return default
            if kind == "num":
                v = float(v)
        return v

    @staticmethod
    def _expect(kind: str, allowed: tuple[str, ...] | None) -> str:
        if allowed:
            return _fmt_allowed(allowed)
        return {"str": "a string", "int": "an integer", "num": "a number"}[kind]

    def unknown(
        self, d: dict, allowed: tuple[str, ...], line_of: Any, who: str | None, prefix: str = ""
    ) -> None:
        for key in d:
            if key not in allowed:
                self.err(
                    line_of(key),
                    who,
                    prefix + key,
                    f"unknown key; expected one of {', '.join(allowed)}",
                )


def _parse_bind(text: str) -> tuple[str, str, int | str] | str:
    """``'switch.closed["Q12"]'`` -> (table, column, element); a problem text when malformed."""
    m = _BIND_RE.match(text)
    expected = (
        'expected table.column[index] or table.column["name"], e.g. '
        '\'switch.closed["Q12"]\' or "bus.vm_pu[5]"'
    )
    if not m:
        return f"{expected}, found {text!r}"
    table, column, inner = m.groups()
    if re.fullmatch(r"\d+", inner):
        return table, column, int(inner)
    if len(inner) >= 2 and inner[0] == inner[-1] == '"':
        try:
            name = json.loads(inner)
        except ValueError:
            return f"{expected}, found {text!r}"
    elif len(inner) >= 2 and inner[0] == inner[-1] == "'":
        name = inner[1:-1]
    else:
        return f"{expected}, found {text!r}"
    if not isinstance(name, str) or not name:
        return f"{expected}, found {text!r}"
    return table, column, name


def loads_pointmap(text: str, *, source: str = "<string>") -> PointMap:
    """Parse a point map from TOML text. Every problem is reported, each with file and line.

    Raises:
        PointMapError: TOML syntax error, unknown key, wrong type or value.
    """
    try:
        doc = parse_toml(text, source=source).data
    except TomlFileError as exc:
        raise PointMapError(f"{source}: {exc.problems[0].message}", [str(exc)]) from None
    lines = _Lines(text)
    r = _Reader(source, lines)
    r.unknown(doc, _TOP_KEYS, lambda k: lines.top.get(k), None)
    substation = r.get(doc, "substation", "str", "SS1", lines.top.get("substation"), None)
    namespace = r.get(
        doc, "namespace", "str", "urn:gridtwin:substation", lines.top.get("namespace"), None
    )
    stale_factor = r.get(
        doc, "stale_factor", "num", 3.0, lines.top.get("stale_factor"), None, positive=True
    )
    grid = r.get(doc, "grid", "str", None, lines.top.get("grid"), None)
    mode = r.get(doc, "mode", "str", None, lines.top.get("mode"), None, allowed=("hil", "mirror"))
    d_unit = r.get(
        doc, "modbus_unit", "int", 1, lines.top.get("modbus_unit"), None, low=0, high=_MAX_UNIT_ID
    )
    d_order = r.get(
        doc, "word_order", "str", "big", lines.top.get("word_order"), None, allowed=WORD_ORDERS
    )
    d_interval = r.get(
        doc, "interval_s", "num", 1.0, lines.top.get("interval_s"), None, positive=True
    )
    raw_points = doc.get("point", [])
    if not isinstance(raw_points, list) or not all(isinstance(p, dict) for p in raw_points):
        r.err(
            lines.top.get("point"), None, "point", "expected [[point]] tables (an array of tables)"
        )
        raw_points = []
    points = []
    for i, d in enumerate(raw_points):
        pt = _read_point(r, i, d, d_unit, d_order, d_interval)
        if pt is not None:
            points.append(pt)
    if r.problems:
        raise PointMapError(f"{source}: invalid point map ({len(r.problems)} problems)", r.problems)
    return PointMap(
        points=tuple(points),
        substation=substation,
        namespace=namespace,
        stale_factor=stale_factor,
        source=source,
        grid=grid,
        mode=mode,
    )


def _read_point(
    r: _Reader, i: int, d: dict, d_unit: int, d_order: str, d_interval: float
) -> Point | None:
    lines = r.lines
    hdr = lines.point(i)
    before = len(r.problems)

    def at(key: str, sub: str = "") -> int | None:
        return lines.key(i, sub, key)

    name = d.get("name") if isinstance(d.get("name"), str) and d.get("name") else None
    who = name or f"#{i + 1}"
    r.unknown(d, _POINT_KEYS, at, who)
    if name is None:
        r.err(
            at("name"),
            who,
            "name",
            f"expected a non-empty string, found {d.get('name')!r}"
            if "name" in d
            else "missing (expected a non-empty string)",
        )
    bind = r.get(d, "bind", "str", None, at("bind"), who, required=True)
    table = column = ""
    element: int | str = -1
    if bind is not None:
        parsed = _parse_bind(bind)
        if isinstance(parsed, str):
            r.err(at("bind"), who, "bind", parsed)
        else:
            table, column, element = parsed
    direction = r.get(
        d, "direction", "str", "to_twin", at("direction"), who, required=True, allowed=DIRECTIONS
    )
    kind = r.get(d, "kind", "str", "measurement", at("kind"), who, required=True, allowed=KINDS)
    unit = r.get(d, "unit", "str", "", at("unit"), who)
    low = r.get(d, "low", "num", None, at("low"), who)
    high = r.get(d, "high", "num", None, at("high"), who)
    if low is not None and high is not None and low > high:
        r.err(at("high"), who, "high", f"expected high >= low ({low:g}), found {high:g}")
    deadband = r.get(d, "deadband", "num", 0.0, at("deadband"), who, low=0.0)
    tolerance = r.get(d, "tolerance", "num", None, at("tolerance"), who, low=0.0)
    interval_s = r.get(d, "interval_s", "num", d_interval, at("interval_s"), who, positive=True)
    p_min = r.get(d, "plausible_min", "num", None, at("plausible_min"), who)
    p_max = r.get(d, "plausible_max", "num", None, at("plausible_max"), who)
    if p_min is not None and p_max is not None and p_min > p_max:
        r.err(
            at("plausible_max"),
            who,
            "plausible_max",
            f"expected plausible_max >= plausible_min ({p_min:g}), found {p_max:g}",
        )
    max_rate = r.get(d, "max_rate", "num", None, at("max_rate"), who, positive=True)

    modbus = None
    if "modbus" in d:
        if not isinstance(d["modbus"], dict):
            r.err(at("modbus"), who, "modbus", "expected a table [point.modbus]")
        else:
            modbus = _read_modbus(r, i, d["modbus"], who, d_unit, d_order)
    opcua = None
    if "opcua" in d:
        if not isinstance(d["opcua"], dict):
            r.err(at("opcua"), who, "opcua", "expected a table [point.opcua]")
        else:
            opcua = _read_opcua(r, i, d["opcua"], who)
    if len(r.problems) > before:
        return None
    return Point(
        name=name or "",
        table=table,
        column=column,
        element=element,
        direction=direction,
        kind=kind,
        unit=unit,
        low=low,
        high=high,
        deadband=deadband,
        tolerance=tolerance,
        interval_s=interval_s,
        modbus=modbus,
        opcua=opcua,
        plausible_min=p_min,
        plausible_max=p_max,
        max_rate=max_rate,
        line=hdr,
    )


def _read_modbus(
    r: _Reader, i: int, m: dict, who: str, d_unit: int, d_order: str
) -> ModbusBinding | None:
    def at(key: str) -> int | None:
        return r.lines.key(i, "modbus", key)

    before = len(r.problems)
    r.unknown(m, _MODBUS_KEYS, at, who, "modbus.")
    unit = r.get(
        m, "unit", "int", d_unit, at("unit"), who, low=0, high=_MAX_UNIT_ID, label="modbus.unit"
    )
    table = r.get(
        m,
        "table",
        "str",
        "input_register",
        at("table"),
        who,
        required=True,
        allowed=MODBUS_TABLES,
        label="modbus.table",
    )
    address = r.get(
        m,
        "address",
        "int",
        0,
        at("address"),
        who,
        required=True,
        low=0,
        high=65535,
        label="modbus.address",
    )
    bit_table = table in ("coil", "discrete_input")
    dtype = r.get(
        m,
        "type",
        "str",
        "bool" if bit_table else "float32",
        at("type"),
        who,
        allowed=DATA_TYPES,
        label="modbus.type",
    )
    word_order = r.get(
        m,
        "word_order",
        "str",
        d_order,
        at("word_order"),
        who,
        allowed=WORD_ORDERS,
        label="modbus.word_order",
    )
    scale = r.get(m, "scale", "num", 1.0, at("scale"), who, label="modbus.scale")
    if scale == 0.0:
        r.err(at("scale"), who, "modbus.scale", "expected a non-zero number, found 0")
    offset = r.get(m, "offset", "num", 0.0, at("offset"), who, label="modbus.offset")
    na: float | int | None = None
    if "na" in m:
        v = m["na"]
        if dtype in _INT_RANGE:
            lo, hi = _INT_RANGE[dtype]
            if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
                na = v
            else:
                r.err(
                    at("na"),
                    who,
                    "modbus.na",
                    f"expected a raw {dtype} value in [{lo}, {hi}], found {v!r}",
                )
        elif dtype == "bool":
            if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
                na = v
            else:
                r.err(at("na"), who, "modbus.na", f"expected 0 or 1 for a bool, found {v!r}")
        elif _is_num(v):
            # NaN is what a float without a sentinel encodes anyway: keep None for it.
            na = None if math.isnan(v) else float(v)
        else:
            r.err(at("na"), who, "modbus.na", f"expected a number (or nan), found {v!r}")
    if len(r.problems) > before:
        return None
    return ModbusBinding(
        unit=unit,
        table=table,
        address=address,
        dtype=dtype,
        word_order=word_order,
        scale=scale,
        offset=offset,
        na_sentinel=na,
    )


def _read_opcua(r: _Reader, i: int, o: dict, who: str) -> OpcuaBinding | None:
    def at(key: str) -> int | None:
        return r.lines.key(i, "opcua", key)

    before = len(r.problems)
    r.unknown(o, _OPCUA_KEYS, at, who, "opcua.")
    node_id = r.get(o, "node_id", "str", None, at("node_id"), who, label="opcua.node_id")
    path: tuple[str, ...] | None = None
    if "browse_path" in o:
        bp = o["browse_path"]
        if isinstance(bp, list) and bp and all(isinstance(s, str) and s for s in bp):
            path = tuple(bp)
        else:
            r.err(
                at("browse_path"),
                who,
                "opcua.browse_path",
                f"expected a list of non-empty strings (Substation, Bay, Element, "
                f"Variable), found {bp!r}",
            )
    m = _NODE_RE.match(node_id) if node_id is not None else None
    if node_id is not None and not m:
        r.err(
            at("node_id"),
            who,
            "opcua.node_id",
            f"expected 'ns=<index>;s=<string>' (or i=, g=, b=), found {node_id!r}",
        )
    if len(r.problems) > before:
        return None
    if node_id is None and path is None:
        r.err(at("node_id"), who, "opcua", "expected node_id or browse_path, found neither")
        return None
    if node_id is None:
        assert path is not None
        node_id = "ns=2;s=" + "/".join(path)
    if path is None:
        assert m is not None
        if m.group(2) != "s":
            r.err(
                at("node_id"),
                who,
                "opcua.browse_path",
                f"missing: needed when the node id is not a string id, found {node_id!r}",
            )
            return None
        path = tuple(m.group(3).split("/"))
    return OpcuaBinding(node_id=node_id, browse_path=path)


def load_pointmap(path: str | os.PathLike[str]) -> PointMap:
    """Read a point map file (TOML). Errors name the file, the line, the point and the key."""
    p = Path(path)
    try:
        text = read_text(p, what="point map")
    except TomlFileError as exc:
        raise PointMapError(str(exc), [str(exc)]) from None
    return loads_pointmap(text, source=str(p))


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _toml_num(x: float | int) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    return repr(float(x))


def _bind_text(p: Point) -> str:
    if isinstance(p.element, str):
        text = f"{p.table}.{p.column}[{json.dumps(p.element, ensure_ascii=False)}]"
    else:
        text = f"{p.table}.{p.column}[{int(p.element)}]"
    if "'" not in text and all(c >= " " and c != "\x7f" for c in text):
        return f"'{text}'"
    return _toml_str(text)


def dumps_pointmap(pm: PointMap) -> str:
    """The point map as TOML text; ``loads_pointmap(dumps_pointmap(pm))`` gives the same points."""
    out = ["# gridtwin point map (docs/point-map.md). Modbus addresses are 0-based."]
    out.append(f"substation = {_toml_str(pm.substation)}")
    out.append(f"namespace = {_toml_str(pm.namespace)}")
    out.append(f"stale_factor = {_toml_num(pm.stale_factor)}")
    if pm.grid is not None:
        out.append(f"grid = {_toml_str(pm.grid)}")
    if pm.mode is not None:
        out.append(f"mode = {_toml_str(pm.mode)}")
    for p in pm.points:
        out.append("")
        out.append("[[point]]")
        out.append(f"name = {_toml_str(p.name)}")
        out.append(f"bind = {_bind_text(p)}")
        out.append(f"direction = {_toml_str(p.direction)}")
        out.append(f"kind = {_toml_str(p.kind)}")
        out.append(f"unit = {_toml_str(p.unit)}")
        if p.low is not None:
            out.append(f"low = {_toml_num(p.low)}")
        if p.high is not None:
            out.append(f"high = {_toml_num(p.high)}")
        out.append(f"deadband = {_toml_num(p.deadband)}")
        if p.tolerance is not None:
            out.append(f"tolerance = {_toml_num(p.tolerance)}")
        out.append(f"interval_s = {_toml_num(p.interval_s)}")
        if p.plausible_min is not None:
            out.append(f"plausible_min = {_toml_num(p.plausible_min)}")
        if p.plausible_max is not None:
            out.append(f"plausible_max = {_toml_num(p.plausible_max)}")
        if p.max_rate is not None:
            out.append(f"max_rate = {_toml_num(p.max_rate)}")
        if p.modbus is not None:
            m = p.modbus
            out.append("[point.modbus]")
            out.append(f"unit = {m.unit}")
            out.append(f"table = {_toml_str(m.table)}")
            out.append(f"address = {m.address}")
            out.append(f"type = {_toml_str(m.dtype)}")
            out.append(f"word_order = {_toml_str(m.word_order)}")
            if m.scale != 1.0:
                out.append(f"scale = {_toml_num(m.scale)}")
            if m.offset != 0.0:
                out.append(f"offset = {_toml_num(m.offset)}")
            if m.na_sentinel is not None:
                out.append(f"na = {_toml_num(m.na_sentinel)}")
        if p.opcua is not None:
            o = p.opcua
            out.append("[point.opcua]")
            out.append(f"node_id = {_toml_str(o.node_id)}")
            out.append("browse_path = [" + ", ".join(_toml_str(s) for s in o.browse_path) + "]")
    return "\n".join(out) + "\n"


# =============================================================================================
# Checking a point map against a grid
# =============================================================================================


def check_pointmap(pm: PointMap, net: Any) -> list[str]:
    """Every problem of ``pm`` against ``net``, one line each naming the point and its line.

    Empty when the point map is valid.
    """
    src = pm.source
    problems: list[str] = []

    def bad(p: Point, msg: str) -> None:
        problems.append(f"{_where(p, src)}: point {p.name!r}: {msg}")

    def at_line(p: Point) -> str:
        return f"line {p.line}" if p.line else "another point"

    names: dict[str, Point] = {}
    nodes: dict[str, Point] = {}
    columns: dict[str, frozenset[str]] = {}
    name_index: dict[str, dict[str, list[int]]] = {}
    index_sets: dict[str, set[int]] = {}
    spans: dict[tuple[int, str], list[tuple[int, int, Point]]] = {}

    for p in pm.points:
        if p.name in names:
            bad(p, f"duplicate point name (also at {at_line(names[p.name])})")
        else:
            names[p.name] = p
        # -- model binding ---------------------------------------------------------------
        table_ok = False
        try:
            df = net[p.table]
            table_ok = hasattr(df, "columns") and hasattr(df, "index")
        except (KeyError, AttributeError, TypeError):
            table_ok = False
        if not table_ok:
            tables = [t for t in _RESULT_COLUMNS if t in net]
            bad(p, f"table: expected one of {', '.join(tables)}, found {p.table!r}")
        else:
            if p.table not in columns:
                columns[p.table] = known_columns(net, p.table)
            if p.column not in columns[p.table]:
                bad(
                    p,
                    f"column: expected one of {', '.join(sorted(columns[p.table]))} for "
                    f"{p.table}, found {p.column!r}",
                )
            _check_element(p, df, name_index, index_sets, bad)
        # -- kind and direction ----------------------------------------------------------
        if p.kind not in KINDS:
            bad(p, f"kind: expected {_fmt_allowed(KINDS)}, found {p.kind!r}")
        if p.direction not in DIRECTIONS:
            bad(p, f"direction: expected {_fmt_allowed(DIRECTIONS)}, found {p.direction!r}")
        elif p.kind == "status" and p.direction != "to_twin":
            bad(
                p,
                f"direction: a status is read from the field: expected 'to_twin', "
                f"found {p.direction!r}",
            )
        elif p.kind == "command" and p.direction != "to_field":
            bad(
                p,
                f"direction: a command goes to the field: expected 'to_field', "
                f"found {p.direction!r}",
            )
        if p.low is not None and p.high is not None and p.low > p.high:
            bad(p, f"high: expected high >= low ({p.low:g}), found {p.high:g}")
        _check_plausibility(p, bad)
        if p.modbus is None and p.opcua is None:
            bad(p, "no binding: expected [point.modbus] and/or [point.opcua], found neither")
        # -- OPC UA ----------------------------------------------------------------------
        if p.opcua is not None:
            if p.opcua.node_id in nodes:
                bad(
                    p,
                    f"opcua.node_id: duplicate node id {p.opcua.node_id!r} (also point "
                    f"{nodes[p.opcua.node_id].name!r} at {at_line(nodes[p.opcua.node_id])})",
                )
            else:
                nodes[p.opcua.node_id] = p
        # -- Modbus ----------------------------------------------------------------------
        m = p.modbus
        if m is None:
            continue
        if m.table not in MODBUS_TABLES:
            bad(p, f"modbus.table: expected {_fmt_allowed(MODBUS_TABLES)}, found {m.table!r}")
            continue
        if m.dtype not in DATA_TYPES:
            bad(p, f"modbus.type: expected {_fmt_allowed(DATA_TYPES)}, found {m.dtype!r}")
            continue
        if m.word_order not in WORD_ORDERS:
            bad(
                p,
                f"modbus.word_order: expected {_fmt_allowed(WORD_ORDERS)}, found {m.word_order!r}",
            )
        if not 0 <= m.unit <= _MAX_UNIT_ID:
            bad(p, f"modbus.unit: expected a unit id in [0, {_MAX_UNIT_ID}], found {m.unit}")
        bit_table = m.table in ("coil", "discrete_input")
        if bit_table and m.dtype != "bool":
            bad(p, f"modbus.type: a {m.table} holds one bit: expected 'bool', found {m.dtype!r}")
        if not bit_table and m.dtype == "bool":
            bad(
                p,
                f"modbus.type: a bool does not belong in {_a(m.table)}: expected one of "
                f"{', '.join(t for t in DATA_TYPES if t != 'bool')} (or a coil / discrete "
                f"input), found 'bool'",
            )
        n = m.count
        if not bit_table and n > 1 and m.address % 2:
            bad(
                p,
                f"modbus.address: a {m.dtype} spans {n} registers and must start at an even "
                f"address, found {m.address}",
            )
        if not 0 <= m.address or m.address + n > 65536:
            bad(
                p,
                f"modbus.address: expected {n} register(s) within 0..65535, found address "
                f"{m.address}",
            )
        # A to_field measurement in holding registers is what a device under test that is a
        # Modbus server gets written (docs/hardware.md); one the twin reads must not be there.
        if (
            m.table in ("coil", "holding_register")
            and p.kind in ("status", "measurement")
            and p.direction == "to_twin"
        ):
            bad(
                p,
                f"modbus.table: a {m.table} is writable by clients, only for commands and "
                f"setpoints (and values the twin writes to a device under test); a to_twin "
                f"{p.kind} belongs in "
                f"{'a discrete_input' if bit_table else 'an input_register'}",
            )
        if m.table in ("discrete_input", "input_register") and p.kind in ("command", "setpoint"):
            bad(
                p,
                f"modbus.table: a {p.kind} must be writable by clients: expected "
                f"{'a coil' if bit_table else 'a holding_register'}, found {m.table!r}",
            )
        spans.setdefault((m.unit, m.table), []).append((m.address, m.address + n, p))

    for (unit, mtable), items in spans.items():
        items.sort(key=lambda t: (t[0], t[1]))
        end, owner = -1, None
        for start, stop, p in items:
            if owner is not None and start < end:
                bad(
                    p,
                    f"modbus.address: {mtable} {start}..{stop - 1} on unit {unit} overlaps "
                    f"point {owner.name!r} ({owner.modbus.address}.."  # type: ignore[union-attr]
                    f"{end - 1}, {at_line(owner)})",
                )
            if stop > end:
                end, owner = stop, p
    problems.sort(key=_problem_order)
    return problems


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _problem_order(msg: str) -> tuple[int, str]:
    m = re.match(r"^.*?:(\d+): ", msg)
    return (int(m.group(1)) if m else 0, msg)


def _check_plausibility(p: Point, bad: Any) -> None:
    """The map's plausibility limits against each other and against the write limits."""
    lo, hi = p.plausible_min, p.plausible_max
    given = [
        k
        for k, v in (("plausible_min", lo), ("plausible_max", hi), ("max_rate", p.max_rate))
        if v is not None
    ]
    if not given:
        return
    if p.direction == "to_field":
        bad(
            p,
            f"{given[0]}: plausibility limits are checked on values read from the field: "
            f"expected a to_twin point, found a to_field one",
        )
        return
    if lo is not None and hi is not None and lo > hi:
        bad(p, f"plausible_max: expected plausible_max >= plausible_min ({lo:g}), found {hi:g}")
        return
    if p.max_rate is not None and not p.max_rate > 0:
        bad(p, f"max_rate: expected a number > 0 (per second), found {p.max_rate!r}")
    # a value a client may write must read back as plausible, else the twin holds a value
    # the field accepted
    if lo is not None and p.low is not None and p.low < lo:
        bad(
            p,
            f"low: the write limit must lie within the plausibility limits: expected "
            f"low >= plausible_min ({lo:g}), found {p.low:g}",
        )
    if hi is not None and p.high is not None and p.high > hi:
        bad(
            p,
            f"high: the write limit must lie within the plausibility limits: expected "
            f"high <= plausible_max ({hi:g}), found {p.high:g}",
        )


def _check_element(
    p: Point,
    df: Any,
    name_index: dict[str, dict[str, list[int]]],
    index_sets: dict[str, set[int]],
    bad: Any,
) -> None:
    e = p.element
    if isinstance(e, bool) or not isinstance(e, (int, str)):
        bad(p, f"element: expected an index (int) or a name (str), found {e!r}")
        return
    if isinstance(e, int):
        if p.table not in index_sets:
            index_sets[p.table] = {int(i) for i in df.index}
        if e not in index_sets[p.table]:
            bad(p, f"element: expected an index of {p.table} ({len(df)} rows), found {e}")
        return
    if p.table not in name_index:
        idx: dict[str, list[int]] = {}
        if "name" in df.columns:
            for i, n in zip(df.index, df["name"].tolist()):
                if n is None or (isinstance(n, float) and math.isnan(n)):
                    continue
                idx.setdefault(str(n), []).append(int(i))
        name_index[p.table] = idx
    hits = name_index[p.table].get(e, [])
    if not hits:
        bad(
            p,
            f"element: expected the name of a {p.table} element, found {e!r} (no {p.table} "
            f"has that name)",
        )
    elif len(hits) > 1:
        bad(p, f"element: name {e!r} is ambiguous: {p.table} indices {hits}; bind by index")


def assert_pointmap(pm: PointMap, net: Any) -> None:
    """Raise :class:`PointMapError` listing every problem of ``pm`` against ``net``."""
    problems = check_pointmap(pm, net)
    if problems:
        what = f"point map {pm.source}" if pm.source else "point map"
        raise PointMapError(f"{what} does not fit the grid ({len(problems)} problems)", problems)


def summarize(pm: PointMap) -> dict[str, dict[str, int]]:
    """Counts per kind, per Modbus table and per direction (for ``gridtwin points check``)."""
    out: dict[str, dict[str, int]] = {"kind": {}, "modbus": {}, "direction": {}}
    for p in pm.points:
        out["kind"][p.kind] = out["kind"].get(p.kind, 0) + 1
        out["direction"][p.direction] = out["direction"].get(p.direction, 0) + 1
        if p.modbus is not None:
            out["modbus"][p.modbus.table] = out["modbus"].get(p.modbus.table, 0) + 1
    return out


def is_heartbeat(point: Point) -> bool:
    """Whether ``point`` is a heartbeat point (the twin writes it, device watchdogs watch it)."""
    return point.column == HEARTBEAT_COLUMN and point.table == "bus"
