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
from collections.abc import Callable, Iterable

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
        #: the points by name, as the store was built (the hot path looks up here)
        self._points: dict[str, Point] = {p.name: p for p in pointmap.points}
        self._listeners: list[Listener] = []
        self._transform: Transform | None = None
        #: plant-side faults: point -> the sample it is frozen at; points of a device offline
        self._frozen: dict[str, Sample] = {}
        self._offline: set[str] = set()
        #: what the devices last set on a faulted point (restored when the fault ends)
        self._true: dict[str, Sample] = {}

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

    def device_get(self, name: str) -> Sample:
        """What the device itself has for ``name``: a plant-side fault (a frozen report, a
        device offline) changes what the substation reports, not what the device measures."""
        s = self._true.get(name)
        return s if s is not None else self.get(name)

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
        point = self._points.get(name)
        if point is None:
            point = self.point(name)  # raises UnknownPoint
        v = float(value)
        if self._transform is not None and not source.startswith("device:"):
            v = float(self._transform(point, v, quality, source))
        if not math.isfinite(v):
            quality = Quality.INVALID
        sample = Sample(v, quality, self.clock() if timestamp is None else timestamp)
        if name in self._true:
            self._true[name] = sample
            sample = self._faulted(name, sample)
        self._publish(point, sample, source)

    def set_many(
        self,
        items: Iterable[tuple[str, float]],
        *,
        source: str = "internal",
        timestamp: float | None = None,
    ) -> None:
        """``set(name, value, source=source)`` for every pair, GOOD (INVALID when not finite),
        all stamped ``timestamp`` (None: one clock reading): the bulk path of a plant write
        (one step's measurements, one Write request). Listeners are notified per point, in
        order, as ``set`` does.

        Raises:
            UnknownPoint: a name not in the point map (the pairs before it are set).
        """
        points = self._points
        values = self._values
        true = self._true
        listeners = tuple(self._listeners)
        transform = None if source.startswith("device:") else self._transform
        now = self.clock() if timestamp is None else timestamp
        good, invalid = Quality.GOOD, Quality.INVALID
        isfinite = math.isfinite
        for name, value in items:
            point = points.get(name)
            if point is None:
                point = self.point(name)  # raises UnknownPoint
            v = float(value)
            if transform is not None:
                v = float(transform(point, v, good, source))
            sample = Sample(v, good if isfinite(v) else invalid, now)
            if true and name in true:
                true[name] = sample
                sample = self._faulted(name, sample)
            values[name] = sample
            for listener in listeners:
                try:
                    listener(point, sample, source)
                except Exception:  # a listener must not break the writer
                    _log.exception("point-store listener failed for %s", name)

    def _publish(self, point: Point, sample: Sample, source: str) -> None:
        name = point.name
        self._values[name] = sample
        for listener in list(self._listeners):
            try:
                listener(point, sample, source)
            except Exception:  # a listener must not break the writer
                _log.exception("point-store listener failed for %s", name)

    # --- plant-side faults (runtime fault injection: a frozen meter, a device offline) -------
    def _faulted(self, name: str, sample: Sample) -> Sample:
        """What the substation reports for ``name`` given what its device set (``sample``)."""
        if name in self._offline:
            return Sample(sample.value, Quality.COMMS_LOST, sample.timestamp)
        frozen = self._frozen.get(name)
        if frozen is not None:  # value and timestamp stop; the quality is the device's
            return Sample(frozen.value, sample.quality, frozen.timestamp)
        return sample

    def _refault(self, name: str, source: str) -> None:
        true = self._true.get(name, self._values[name])
        if name not in self._frozen and name not in self._offline:
            self._true.pop(name, None)
            self._publish(self.point(name), true, source)
            return
        self._true[name] = true
        self._publish(self.point(name), self._faulted(name, true), source)

    def freeze(self, name: str, frozen: bool = True, *, source: str = "fault") -> None:
        """Freeze ``name`` at its current value and timestamp (``frozen=False``: release it, it
        reports the device's latest value again). Its quality stays what the device sets."""
        self.point(name)
        if frozen:
            self._frozen.setdefault(name, self._true.get(name, self._values[name]))
        else:
            self._frozen.pop(name, None)
        self._refault(name, source)

    def set_offline(self, names: list[str], offline: bool = True, *, source: str = "fault") -> None:
        """Mark ``names`` (a device's points) COMMS_LOST, as a gateway reports a device that
        dropped off; ``offline=False``: they report the device's latest values again."""
        for name in names:
            self.point(name)
            if offline:
                self._offline.add(name)
            else:
                self._offline.discard(name)
            self._refault(name, source)

    @property
    def faults(self) -> dict[str, str]:
        """Point -> ``"frozen"`` or ``"offline"`` for every point under a plant-side fault."""
        out = {n: "frozen" for n in self._frozen}
        out.update({n: "offline" for n in self._offline})
        return out

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
