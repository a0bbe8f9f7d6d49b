"""The emulated substation's point store: values of every point, knowing nothing of sockets.

Both protocol servers (OPC UA and Modbus) and the device behaviours read and write this one store,
so a write through one protocol is visible through the other at once. Two write paths:

- ``set()``: the inside of the substation (device behaviours, the plant side). No role check.
- ``write()``: a client write arriving over a protocol. Checks the role against the point's kind,
  the limits, and finiteness, and raises instead of changing anything.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from hil.errors import UnknownPoint, WriteRejected, value_within_limits
from twin.pointmap import Point, PointMap
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

#: What each role may write through a protocol. "plant" is the twin injecting computed
#: measurements in hil mode; "operator" is SCADA or a controller under test.
ROLE_WRITES: dict[str, frozenset[str]] = {
    "viewer": frozenset(),
    "operator": frozenset({"command", "setpoint"}),
    "plant": frozenset({"measurement", "status", "command", "setpoint"}),
    "admin": frozenset({"measurement", "status", "command", "setpoint"}),
}

Listener = Callable[[Point, Sample, str], None]
#: Turns a value written from outside the devices into what the substation reports (an RTU's
#: noise and bias). Runs before the value is stored, so every listener sees the reported value.
Transform = Callable[[Point, float, Quality, str], float]


class PointStore:
    """Current value, quality and source timestamp of every point of a point map."""

    def __init__(self, pointmap: PointMap, *, clock: Callable[[], float] = time.time) -> None:
        self.pointmap = pointmap
        self.clock = clock
        now = clock()
        self._values: dict[str, Sample] = {
            p.name: Sample(0.0, Quality.INVALID, now) for p in pointmap.points
        }
        self._listeners: list[Listener] = []
        self._transform: Transform | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def point(self, name: str) -> Point:
        try:
            return self.pointmap[name]
        except KeyError:
            raise UnknownPoint(f"no point named {name!r} in the point map") from None

    def get(self, name: str) -> Sample:
        try:
            return self._values[name]
        except KeyError:
            raise UnknownPoint(f"no point named {name!r} in the point map") from None

    def value(self, name: str) -> float:
        return self.get(name).value

    def set(
        self,
        name: str,
        value: float,
        *,
        quality: Quality = Quality.GOOD,
        timestamp: float | None = None,
        source: str = "internal",
    ) -> None:
        """Set a value from inside the substation (devices, plant). Notifies listeners."""
        point = self.point(name)
        v = float(value)
        if self._transform is not None and not source.startswith("device:"):
            v = float(self._transform(point, v, quality, source))
        if not math.isfinite(v):
            quality = Quality.INVALID
        sample = Sample(v, quality, self.clock() if timestamp is None else timestamp)
        self._values[name] = sample
        for listener in list(self._listeners):
            try:
                listener(point, sample, source)
            except Exception:  # a listener must not break the writer
                _log.exception("point-store listener failed for %s", name)

    def check_write(self, name: str, value: float, *, role: str) -> Point:
        """Raise the error a client write would get, without writing."""
        point = self.point(name)
        allowed = ROLE_WRITES.get(role)
        if allowed is None:
            raise WriteRejected(f"unknown role {role!r}; roles: {', '.join(ROLE_WRITES)}")
        if point.kind not in allowed:
            raise WriteRejected(
                f"point {name!r} is a {point.kind} and role {role!r} may write only "
                f"{', '.join(sorted(allowed)) or 'nothing'}"
            )
        value_within_limits(point, value)
        return point

    def write(self, name: str, value: float, *, role: str, source: str = "client") -> None:
        """A client write over a protocol: role, limits and finiteness checked, then set."""
        self.check_write(name, value, role=role)
        self.set(name, value, source=source)

    def set_transform(self, transform: Transform | None) -> None:
        """Install (or remove, with None) the one transform of non-device writes."""
        if transform is not None and self._transform not in (None, transform):
            raise ValueError("the point store already has a transform (one RTU per store)")
        self._transform = transform

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(point, sample, source)`` on every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def snapshot(self) -> dict[str, Sample]:
        return dict(self._values)
