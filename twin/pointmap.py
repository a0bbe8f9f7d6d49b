"""The point map: one description of field points for OPC UA and Modbus (no sockets here).

Each point binds a model quantity (pandapower ``table``, ``column``, ``element``) to an OPC UA
node and/or a Modbus address. Modbus addresses are 0-based protocol addresses as they travel on the
wire, stated once here; nothing adds hidden offsets anywhere else.

Direction is seen from the twin: ``to_twin`` points are read from the field and applied to the
model (statuses, setpoints and, in mirror mode, measurements); ``to_field`` points are written by
the twin (computed measurements in hil mode, commands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
    "bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4,
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
    line: int | None = None

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
    _by_name: dict[str, Point] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.points})

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
