"""The in-process link into the emulated substation's point store (no socket)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from hil.errors import WriteRejected
from hil.links.base import FieldLink, OutputBatch
from hil.store import GOOD as _GOOD
from hil.store import ROLE_WRITES
from twin.pointmap import Point
from twin.quality import Quality, Sample


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
        self._in_pos: np.ndarray | None = None
        #: id(batch) -> (batch, its store positions, whether the role may write each)
        self._batches: dict[int, tuple[OutputBatch, np.ndarray, np.ndarray]] = {}

    async def connect(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    async def poll(self) -> None:
        now = self.clock()
        store = self.store
        cut = self.cut_points
        pos = self._input_positions()
        if pos is None:  # a store without arrays: the per-point read
            for p in self.inputs:
                if p.name in cut:
                    continue
                s = store.get(p.name)
                # A direct read is a fresh read of the device's current value, as a Modbus
                # poll is.
                self._cache[p.name] = Sample(s.value, s.quality, now) if s.quality.is_good else s
        else:
            good = (store.qualities[pos] == _GOOD).tolist()
            vals = store.values[pos].tolist()
            cache = self._cache
            for p, g, v in zip(self.inputs, good, vals):
                name = p.name
                if name in cut:
                    continue
                # A direct read is a fresh read of the device's current value, as a Modbus
                # poll is.
                cache[name] = Sample(v, Quality.GOOD, now) if g else store.get(name)
        self.stats["reads"] += 1
        self._notify()

    def _input_positions(self) -> np.ndarray | None:
        if self._in_pos is None and hasattr(self.store, "positions"):
            self._in_pos = self.store.positions([p.name for p in self.inputs])
        return self._in_pos

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        return {n: self.store.get(self.point(n).name) for n in names}

    async def _send(self, items: list[tuple[Point, float]]) -> None:
        # write_outputs() has checked direction, limits and finiteness against these very
        # points; the role is checked here once per kind, then values go in with set() (the
        # store's write() would repeat every check, ~10 % of a fast day).
        cut = self.cut_points
        allowed = self._allowed
        todo: list[tuple[str, float]] = []
        for p, v in items:
            if p.name in cut:
                continue
            if p.kind not in allowed:
                self.store.set_many(todo, source=self.name)
                todo = []
                self.store.check_write(p.name, v, role=self.role)  # raises WriteRejected
            todo.append((p.name, v))
        self.store.set_many(todo, source=self.name)
        self.stats["writes"] += 1

    # --- the sync loop's fixed output set ---------------------------------------------------
    def prepare_outputs(self, names: Sequence[str]) -> OutputBatch:
        """A fixed, ordered set of ``to_field`` points for :meth:`write_batch`.

        Raises:
            WriteRejected: a name not on this link or not ``to_field``.
        """
        points = []
        for n in names:
            p = self._by_name.get(n)
            if p is None or p.direction != "to_field":
                raise WriteRejected(
                    f"point {n!r}: expected a to_field point carried by link {self.name}"
                )
            points.append(p)
        return OutputBatch(points)

    async def write_batch(
        self, batch: OutputBatch, values: np.ndarray, mask: np.ndarray | None = None
    ) -> int:
        """Write ``values`` (ordered like ``batch.names``) into the store; returns how many went.

        The same rules as :meth:`write_outputs` as vector operations: only entries in ``mask``
        (all when None) and not cut off are considered; of those, a value within its point's
        deadband of the last one written is skipped unless that was ``interval_s`` or more
        ago; the values are checked before any is written.

        Raises:
            OutOfRange: a considered value is NaN/inf or outside its limits; nothing is written.
            WriteRejected: a point this link's role may not write (the ones before it are).
        """
        vals = np.asarray(values, dtype=float)
        if self.cut_points:
            keep = np.array([n not in self.cut_points for n in batch.names], dtype=bool)
            mask = keep if mask is None else (mask & keep)
        now = self.clock()
        sel = batch.select(vals, mask, now)
        if sel.size == 0:
            return 0
        batch_pos, may = self._batch_rows(batch)
        pos = batch_pos[sel]
        v = vals[sel]
        refused = ~may[sel]
        if refused.any():
            k = int(np.argmax(refused))
            self.store.set_array(pos[:k], v[:k], source=self.name)
            i = int(sel[k])
            self.store.check_write(batch.names[i], float(vals[i]), role=self.role)  # raises
            pos, v = pos[k:], v[k:]
        self.store.set_array(pos, v, source=self.name)
        self.stats["writes"] += 1
        batch.sent(sel, vals, now)
        return int(sel.size)

    def _batch_rows(self, batch: OutputBatch) -> tuple[np.ndarray, np.ndarray]:
        """The store positions of ``batch``'s points and whether this role may write each,
        resolved once per batch (the sync loop keeps its batches)."""
        hit = self._batches.get(id(batch))
        if hit is None or hit[0] is not batch:
            pos = self.store.positions(batch.names)
            may = np.array([p.kind in self._allowed for p in batch.points], dtype=bool)
            if len(self._batches) >= 64:  # bounded: batches are prepared once per loop
                self._batches.clear()
            hit = (batch, pos, may)
            self._batches[id(batch)] = hit
        return hit[1], hit[2]
