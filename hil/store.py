"""The emulated substation's point store: values of every point, knowing nothing of sockets.

Both protocol servers (OPC UA and Modbus) and the device behaviours read and write this one store,
so a write through one protocol is visible through the other at once. Two write paths:

- ``set()``: the inside of the substation (device behaviours, the plant side). No role check.
- ``write()``: a client write arriving over a protocol. Checks the role against the point's kind,
  the limits, and finiteness, and raises instead of changing anything.

Storage is one row per point, in arrays indexed by the point's *position* (its place in the
point map, :meth:`PointStore.positions`): values (float64), quality codes (uint8, an index
into :data:`QUALITIES`), source timestamps (float64) and a version per point that grows on
every change (what a server compares to know which of its encodings are out of date). A
:class:`~twin.quality.Sample` is built on demand by :meth:`PointStore.get` and kept until the
point changes, so ``store.get(n) is sample`` still says "unchanged since".

:meth:`PointStore.set_array` is the bulk path: positions and values as arrays, one clock
reading, faults and qualities as vector masks, one call per batch listener
(:meth:`PointStore.subscribe_batch`). The per-point API (``set``, ``set_many``, ``subscribe``)
behaves as it always did: per-point listeners are called per point, in order.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np

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
#: ``listener(positions, source)``: one call per write (a bulk write or one point); the
#: positions (intp array, in write order) index :attr:`PointStore.names` and the arrays.
BatchListener = Callable[[np.ndarray, str], None]
#: Turns a value written from outside the devices into what the substation reports (an RTU's
#: noise and bias). Runs before the value is stored, so every listener sees the reported value.
Transform = Callable[[Point, float, Quality, str], float]
#: The same for a whole bulk write: ``(positions, values, quality codes, source) -> values``
#: (one float per position, in order), with the behaviour of the per-point transform applied
#: to each entry in order (see :meth:`PointStore.set_transform`).
ArrayTransform = Callable[[np.ndarray, np.ndarray, np.ndarray, str], np.ndarray]

#: Quality code (the uint8 stored per point) -> Quality.
QUALITIES: tuple[Quality, ...] = tuple(Quality)
QUALITY_CODE: dict[Quality, int] = {q: i for i, q in enumerate(QUALITIES)}
#: the same keyed by the member's value (a str hash: an Enum member hashes in Python, ~10x slower)
_CODE_OF_VALUE: dict[str, int] = {q._value_: i for i, q in enumerate(QUALITIES)}
GOOD = QUALITY_CODE[Quality.GOOD]
INVALID = QUALITY_CODE[Quality.INVALID]
COMMS_LOST = QUALITY_CODE[Quality.COMMS_LOST]


def bulk_enabled() -> bool:
    """Whether the vectorised data path is on (environment ``GRIDTWIN_BULK``, default on);
    ``GRIDTWIN_BULK=0`` runs the per-point reference path for a comparison."""
    return os.environ.get("GRIDTWIN_BULK", "1").strip().lower() not in ("0", "off", "false", "no")


def _mview(a: np.ndarray) -> Any:
    return memoryview(a)  # type: ignore[arg-type]


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


class PointStore:
    """Current value, quality and source timestamp of every point of a point map."""

    def __init__(
        self,
        pointmap: PointMap,
        *,
        clock: Callable[[], float] = time.time,
        bulk: bool | None = None,
    ) -> None:
        self.pointmap = pointmap
        self.clock = clock
        #: False: every bulk write runs point by point (the reference the bulk path is
        #: compared with; environment ``GRIDTWIN_BULK=0`` for a whole run)
        self.bulk = bulk_enabled() if bulk is None else bool(bulk)
        now = clock()
        #: the points by name, as the store was built (the hot path looks up here)
        self._points: dict[str, Point] = {p.name: p for p in pointmap.points}
        #: position -> name / point (one row per distinct name, in point-map order)
        self.names: tuple[str, ...] = tuple(self._points)
        self._index: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self._by_pos: tuple[Point, ...] = tuple(self._points[n] for n in self.names)
        n = len(self.names)
        self._v = np.zeros(n, dtype=np.float64)
        self._q = np.full(n, INVALID, dtype=np.uint8)
        self._t = np.full(n, float(now), dtype=np.float64)
        #: per point: the store's write counter at its last change (0: never changed)
        self._ver = np.zeros(n, dtype=np.uint64)
        self._epoch = 0
        #: Sample objects handed out, kept until the point changes (None: build on demand)
        self._samples: list[Sample | None] = [None] * n
        self._listeners: list[Listener] = []
        self._batch_listeners: list[BatchListener] = []
        self._transform: Transform | None = None
        self._array_transform: ArrayTransform | None = None
        #: plant-side faults: point -> the sample it is frozen at; points of a device offline
        self._frozen: dict[str, Sample] = {}
        self._offline: set[str] = set()
        #: what the devices last set on a faulted point (restored when the fault ends)
        self._true: dict[str, Sample] = {}
        #: position -> whether the point is under a fault (name in ``_true``)
        self._faulted_mask = np.zeros(n, dtype=bool)
        # memoryviews: a per-point read of one row costs less than numpy indexing
        self._mv, self._mq, self._mt = _mview(self._v), _mview(self._q), _mview(self._t)
        #: rows whose newest Sample (set per point) is not in the arrays yet: copied in as a
        #: block by :meth:`_sync` when the arrays are read (a per-point set stays a list append)
        self._dirty: list[int] = []
        self._dirty_cap = 4 * n + 1024
        self._ro = (
            _readonly(self._v), _readonly(self._q), _readonly(self._t), _readonly(self._ver)
        )  # fmt: skip

    @property
    def values(self) -> np.ndarray:
        """Values by position (read-only view)."""
        self._sync()
        return self._ro[0]

    @property
    def qualities(self) -> np.ndarray:
        """Quality codes by position (:data:`QUALITIES`; read-only view)."""
        self._sync()
        return self._ro[1]

    @property
    def timestamps(self) -> np.ndarray:
        """Source timestamps by position (read-only view)."""
        self._sync()
        return self._ro[2]

    @property
    def versions(self) -> np.ndarray:
        """Per position: the write counter at the point's last change (read-only view)."""
        self._sync()
        return self._ro[3]

    def _sync(self) -> None:
        """Copy the Samples set per point since the last sync into the arrays, as one block."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        samples = self._samples
        ss = [samples[i] for i in dirty]
        rows = np.array(dirty, dtype=np.intp)
        self._v[rows] = [s.value for s in ss]  # type: ignore[union-attr]
        self._q[rows] = [_CODE_OF_VALUE[s.quality._value_] for s in ss]  # type: ignore[union-attr]
        self._t[rows] = [s.timestamp for s in ss]  # type: ignore[union-attr]
        self._ver[rows] = self._epoch

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.names)

    @property
    def epoch(self) -> int:
        """The write counter: grows by one per write (a bulk write counts once)."""
        return self._epoch

    def point(self, name: str) -> Point:
        try:
            return self.pointmap[name]
        except KeyError:
            raise UnknownPoint(f"no point named {name!r} in the point map") from None

    def position(self, name: str) -> int:
        """The row of ``name`` in the arrays.

        Raises:
            UnknownPoint: a name not in the point map.
        """
        i = self._index.get(name)
        if i is None:
            raise UnknownPoint(f"no point named {name!r} in the point map")
        return i

    def positions(self, names: Iterable[str]) -> np.ndarray:
        """Rows of ``names`` (resolve once, keep them: the bulk path takes positions).

        Raises:
            UnknownPoint: a name not in the point map.
        """
        index = self._index
        try:
            return np.fromiter((index[n] for n in names), dtype=np.intp)
        except KeyError as exc:
            raise UnknownPoint(f"no point named {exc.args[0]!r} in the point map") from None

    def point_at(self, pos: int) -> Point:
        return self._by_pos[pos]

    def get(self, name: str) -> Sample:
        i = self._index.get(name)
        if i is None:
            raise UnknownPoint(f"no point named {name!r} in the point map")
        s = self._samples[i]
        if s is None:
            v = self._mv[i]
            if v != v:  # one NaN object, as float(math.nan) gives: samples compare equal
                v = math.nan
            s = Sample(v, QUALITIES[self._mq[i]], self._mt[i])
            self._samples[i] = s
        return s

    def device_get(self, name: str) -> Sample:
        """What the device itself has for ``name``: a plant-side fault (a frozen report, a
        device offline) changes what the substation reports, not what the device measures."""
        s = self._true.get(name)
        return s if s is not None else self.get(name)

    def value(self, name: str) -> float:
        i = self._index.get(name)
        if i is None:
            raise UnknownPoint(f"no point named {name!r} in the point map")
        s = self._samples[i]
        if s is not None:
            return s.value
        v: float = self._mv[i]
        return math.nan if v != v else v

    # --- writes ------------------------------------------------------------------------------
    def _store(self, i: int, sample: Sample) -> None:
        """Make ``sample`` row ``i``'s (the one per-point write; the arrays follow at sync)."""
        self._epoch += 1
        self._samples[i] = sample
        dirty = self._dirty
        dirty.append(i)
        if len(dirty) > self._dirty_cap:  # nobody reads the arrays: keep the list bounded
            self._sync()

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
        index = self._index
        pos: list[int] = []
        vals: list[float] = []
        seen: set[int] = set()
        now = self.clock() if timestamp is None else timestamp
        try:
            for name, value in items:
                i = index.get(name)
                if i is None:
                    self.point(name)  # raises UnknownPoint
                if i in seen:  # a point twice: the first goes in before the second, as set()
                    self._set_positions(pos, vals, source, now)
                    pos, vals, seen = [], [], set()
                x = float(value)
                pos.append(i)  # type: ignore[arg-type]
                vals.append(x)
                seen.add(i)  # type: ignore[arg-type]
        finally:  # the pairs before a bad one are set
            self._set_positions(pos, vals, source, now)

    def _set_positions(self, pos: list[int], vals: list[float], source: str, now: float) -> None:
        if pos:
            self.set_array(
                np.array(pos, dtype=np.intp),
                np.array(vals, dtype=np.float64),
                source=source,
                timestamp=now,
            )

    def set_array(
        self,
        positions: np.ndarray | Sequence[int],
        values: np.ndarray | Sequence[float],
        *,
        source: str = "internal",
        timestamp: float | None = None,
        quality: Quality | np.ndarray | None = None,
    ) -> None:
        """The bulk write: ``values[k]`` into row ``positions[k]``, all stamped ``timestamp``
        (None: one clock reading), with ``source`` as ``set`` takes it.

        The same rules as ``set`` per point: the transform (not for ``device:`` sources) runs
        per point in order before anything is stored; a value not finite is INVALID; a point
        under a plant-side fault keeps the device's sample aside and reports the faulted one.
        Per-point listeners (if any) are called per point in order once the batch is stored;
        batch listeners once with the positions.

        Args:
            positions: rows (:meth:`positions`), each at most once.
            values: one float per position.
            quality: GOOD for all (None), one Quality for all, or an array of quality codes
                (:data:`QUALITY_CODE`) per position.

        Raises:
            UnknownPoint: a position outside the store (nothing is set).
            ValueError: positions and values (or qualities) of different lengths.
        """
        pos = np.asarray(positions, dtype=np.intp)
        v = np.array(values, dtype=np.float64)  # a copy: the transform may replace entries
        if pos.ndim != 1 or v.shape != pos.shape:
            raise ValueError(
                f"set_array: expected one value per position, found {v.shape} values for "
                f"{pos.shape} positions"
            )
        n = pos.size
        if n == 0:
            return
        if int(pos.min()) < 0 or int(pos.max()) >= len(self.names):
            bad = int(pos[(pos < 0) | (pos >= len(self.names))][0])
            raise UnknownPoint(f"no point at position {bad} (the store has {len(self.names)})")
        if quality is None:
            q = np.full(n, GOOD, dtype=np.uint8)
        elif isinstance(quality, Quality):
            q = np.full(n, QUALITY_CODE[quality], dtype=np.uint8)
        else:
            q = np.array(quality, dtype=np.uint8)
            if q.shape != pos.shape:
                raise ValueError(
                    f"set_array: expected one quality per position, found {q.shape} for "
                    f"{pos.shape} positions"
                )
        if not self.bulk:
            self._set_per_point(pos, v, q, source, timestamp)
            return
        self._sync()  # rows set per point reach the arrays before this batch overwrites them
        transform = None if source.startswith("device:") else self._transform
        if transform is not None and self._array_transform is not None:
            v = np.array(self._array_transform(pos, v, q, source), dtype=np.float64)
            if v.shape != pos.shape:
                raise ValueError(
                    f"set_array: the array transform returned {v.shape} values for "
                    f"{pos.shape} positions"
                )
        elif transform is not None:
            by_pos = self._by_pos
            qlist = q.tolist()
            out = [
                float(transform(by_pos[i], x, QUALITIES[c], source))
                for i, x, c in zip(pos.tolist(), v.tolist(), qlist)
            ]
            v = np.array(out, dtype=np.float64)
        finite = np.isfinite(v)
        if not finite.all():
            q[~finite] = INVALID
        now = float(self.clock() if timestamp is None else timestamp)
        faulted = self._faulted_mask[pos]
        samples = self._samples
        self._epoch += 1
        self._t[pos] = now
        fixed: set[int] = set()  # positions whose reported Sample is made here (faulted)
        if faulted.any():
            # few points (a frozen meter, a device offline): the per-point rules, exactly
            names = self.names
            for k in np.flatnonzero(faulted).tolist():
                i = int(pos[k])
                name = names[i]
                true = Sample(v.item(k), QUALITIES[q.item(k)], now)
                self._true[name] = true
                rep = self._faulted(name, true)
                v[k], q[k] = rep.value, QUALITY_CODE[rep.quality]
                samples[i] = rep
                self._t[i] = rep.timestamp
                fixed.add(i)
        self._v[pos] = v
        self._q[pos] = q
        self._ver[pos] = self._epoch
        if self._listeners:
            self._notify_points(pos, v, q, now, fixed, source)
        else:  # Samples are built when someone asks (get)
            for i in pos.tolist():
                if i not in fixed:
                    samples[i] = None
        for bl in tuple(self._batch_listeners):
            try:
                bl(pos, source)
            except Exception:  # a listener must not break the writer
                _log.exception("point-store batch listener failed (%d points)", n)

    def _set_per_point(
        self, pos: np.ndarray, v: np.ndarray, q: np.ndarray, source: str, ts: float | None
    ) -> None:
        """The reference of :meth:`set_array`: ``set`` per point, listeners per point as each
        is stored (the data path before it was vectorised)."""
        now = self.clock() if ts is None else ts
        transform = None if source.startswith("device:") else self._transform
        names, by_pos, true = self.names, self._by_pos, self._true
        for i, x, c in zip(pos.tolist(), v.tolist(), q.tolist()):
            point = by_pos[i]
            quality = QUALITIES[c]
            if transform is not None:
                x = float(transform(point, x, quality, source))
            if not math.isfinite(x):
                quality = Quality.INVALID
                if x != x:
                    x = math.nan  # one NaN object, as get() hands out
            sample = Sample(x, quality, now)
            name = names[i]
            if name in true:
                true[name] = sample
                sample = self._faulted(name, sample)
            self._publish(point, sample, source)

    def _notify_points(
        self,
        pos: np.ndarray,
        v: np.ndarray,
        q: np.ndarray,
        now: float,
        fixed: AbstractSet[int],
        source: str,
    ) -> None:
        """Per-point listeners, per point in order, with the Samples of the batch."""
        listeners = tuple(self._listeners)
        by_pos = self._by_pos
        samples = self._samples
        nan = math.nan
        for i, x, c in zip(pos.tolist(), v.tolist(), q.tolist()):
            if i in fixed:
                sample = samples[i]
            else:
                sample = Sample(nan if x != x else x, QUALITIES[c], now)
                samples[i] = sample
            point = by_pos[i]
            for listener in listeners:
                try:
                    listener(point, sample, source)
                except Exception:  # a listener must not break the writer
                    _log.exception("point-store listener failed for %s", point.name)

    def _publish(self, point: Point, sample: Sample, source: str) -> None:
        name = point.name
        i = self._index[name]
        self._store(i, sample)
        for listener in list(self._listeners):
            try:
                listener(point, sample, source)
            except Exception:  # a listener must not break the writer
                _log.exception("point-store listener failed for %s", name)
        if self._batch_listeners:
            one = np.array([i], dtype=np.intp)
            for bl in tuple(self._batch_listeners):
                try:
                    bl(one, source)
                except Exception:  # a listener must not break the writer
                    _log.exception("point-store batch listener failed for %s", name)

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
        true = self._true.get(name, self.get(name))
        if name not in self._frozen and name not in self._offline:
            self._true.pop(name, None)
            self._faulted_mask[self._index[name]] = False
            self._publish(self.point(name), true, source)
            return
        self._true[name] = true
        self._faulted_mask[self._index[name]] = True
        self._publish(self.point(name), self._faulted(name, true), source)

    def freeze(self, name: str, frozen: bool = True, *, source: str = "fault") -> None:
        """Freeze ``name`` at its current value and timestamp (``frozen=False``: release it, it
        reports the device's latest value again). Its quality stays what the device sets."""
        self.point(name)
        if frozen:
            self._frozen.setdefault(name, self._true.get(name, self.get(name)))
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

    def set_transform(
        self, transform: Transform | None, *, array: ArrayTransform | None = None
    ) -> None:
        """Install (or remove, with None) the one transform of non-device writes.

        ``array`` is the same transform for a whole :meth:`set_array` batch (one call instead
        of one per point); it must give what ``transform`` gives point by point in order (same
        values, same side effects). Without it the bulk path calls ``transform`` per point.
        The reference path (``bulk=False``) always calls ``transform`` per point.
        """
        if transform is not None and self._transform not in (None, transform):
            raise ValueError("the point store already has a transform (one RTU per store)")
        if transform is None and array is not None:
            raise ValueError("set_transform: an array transform needs its per-point transform")
        self._transform = transform
        self._array_transform = array

    def device_arrays(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and quality codes at ``positions`` as the devices see them
        (:meth:`device_get` for many points at once, new arrays): a point under a plant-side
        fault gives the device's own sample, not the reported one."""
        self._sync()
        v = self._v[positions]
        q = self._q[positions]
        if self._true:
            faulted = self._faulted_mask[positions]
            if faulted.any():
                names, true = self.names, self._true
                for k in np.flatnonzero(faulted).tolist():
                    s = true[names[int(positions[k])]]
                    v[k] = s.value
                    q[k] = _CODE_OF_VALUE[s.quality._value_]
        return v, q

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(point, sample, source)`` on every change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def subscribe_batch(self, listener: BatchListener) -> Callable[[], None]:
        """Call ``listener(positions, source)`` once per write (bulk or one point) with the
        rows it changed; returns an unsubscribe. Cheaper than :meth:`subscribe` for a bulk
        write: no Sample is built and no call is made per point."""
        self._batch_listeners.append(listener)
        return lambda: self._batch_listeners.remove(listener)

    def snapshot(self) -> dict[str, Sample]:
        get = self.get
        return {n: get(n) for n in self.names}
