"""The in-process link into the emulated substation's point store (no socket)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from hil.links.base import FieldLink
from hil.store import ROLE_WRITES
from twin.pointmap import Point
from twin.quality import Sample


class StoreLink(FieldLink):
    """A link straight into the emulated substation's point store (in-process, no socket).

    It behaves like a polled protocol link (quality, staleness, write checks, role) at memory
    speed, so a simulated day of 1-min steps runs in seconds. Points can be cut off one device
    at a time (:meth:`cut`) to emulate a lost device: their inputs turn COMMS_LOST and writes to
    them are dropped.
    """

    protocol = "direct"
    polled = True

    def __init__(
        self,
        store: Any,
        points: Iterable[Point],
        *,
        role: str = "plant",
        clock: Callable[[], float],
        name: str = "direct",
        stale_factor: float = 3.0,
    ) -> None:
        super().__init__(name, points, stale_factor=stale_factor, clock=clock)
        self.store = store
        self.role = role
        self._allowed = ROLE_WRITES.get(role, frozenset())

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def poll(self) -> None:
        now = self.clock()
        for p in self.inputs:
            if p.name in self.cut_points:
                continue
            s = self.store.get(p.name)
            # A direct read is a fresh read of the device's current value, as a Modbus poll is.
            self._cache[p.name] = Sample(s.value, s.quality, now) if s.quality.is_good else s
        self.stats["reads"] += 1
        self._notify()

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        return {n: self.store.get(self.point(n).name) for n in names}

    async def _send(self, items: list[tuple[Point, float]]) -> None:
        # write_outputs() has checked direction, limits and finiteness against these very
        # points; the role is checked here once per kind, then values go in with set() (the
        # store's write() would repeat every check, ~10 % of a fast day).
        cut = self.cut_points
        for p, v in items:
            if p.name in cut:
                continue
            if p.kind not in self._allowed:
                self.store.check_write(p.name, v, role=self.role)  # raises WriteRejected
            self.store.set(p.name, v, source=self.name)
        self.stats["writes"] += 1
