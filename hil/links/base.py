"""The abstract field link: what the sync loop sees of a protocol client (OPC UA or Modbus TCP).

A link carries a fixed set of points. Inputs (``to_twin`` points) are cached as
:class:`twin.quality.Sample` objects by the concrete link (from a subscription or the last poll);
:meth:`FieldLink.read_inputs` ages them into STALE, or marks them COMMS_LOST while the link is down,
and never raises. Outputs (``to_field`` points) are checked against the point map *before* anything
is sent, so a rejected batch changes nothing in the field.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from hil.errors import (
    CommsLost,
    HilTimeout,
    OutOfRange,
    ProtocolError,
    UnknownPoint,
    WriteRejected,
    value_within_limits,
)
from twin.pointmap import Point
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

#: Placeholder for an input never received: NaN, no trustworthy timestamp.
_NEVER = 0.0


class InputArrays(NamedTuple):
    """A link's inputs as :meth:`FieldLink.read_inputs` gives them, as arrays in the order of
    ``names`` (the link's ``inputs``): ``quality`` holds ``hil.store.QUALITIES`` codes, and
    :data:`ABSENT` where ``read_inputs`` gave no sample for the name."""

    names: tuple[str, ...]
    values: np.ndarray
    quality: np.ndarray
    stamps: np.ndarray


#: quality code of an input :meth:`FieldLink.read_inputs` left out (no sample at all)
ABSENT = 255


def new_stats() -> dict[str, Any]:
    """The counters every link keeps (``stats``)."""
    return {"reads": 0, "writes": 0, "errors": 0, "reconnects": 0, "last_error": None}


class OutputBatch:
    """A link's fixed output set: limits, deadbands and what was last sent, as arrays.

    The sync loop prepares one per link (``prepare_outputs``) and hands it each step's values
    as one array (``write_batch``): the deadband and the limits are vector operations.
    """

    def __init__(self, points: Sequence[Point]) -> None:
        self.points: tuple[Point, ...] = tuple(points)
        self.names: tuple[str, ...] = tuple(p.name for p in self.points)
        self.low = np.array([-np.inf if p.low is None else p.low for p in self.points], dtype=float)
        self.high = np.array(
            [np.inf if p.high is None else p.high for p in self.points], dtype=float
        )
        self.deadband = np.array([p.deadband for p in self.points], dtype=float)
        self.interval = np.array([p.interval_s for p in self.points], dtype=float)
        self.last = np.full(len(self.points), np.nan)  # last value sent (NaN: never)
        self.last_t = np.full(len(self.points), -np.inf)

    def select(self, values: np.ndarray, mask: np.ndarray | None, now: float) -> np.ndarray:
        """Indices of the entries to send now: in ``mask`` (all when None) and outside the
        deadband of the last value sent, or last sent ``interval_s`` or more ago.

        Raises:
            ValueError: ``values`` not one per point.
            OutOfRange: a selected value is NaN/inf or outside its limits (nothing is sent).
        """
        if values.shape != self.last.shape:
            raise ValueError(
                f"write_batch: expected {self.last.shape[0]} values, found {values.shape}"
            )
        with np.errstate(invalid="ignore"):
            send = (
                (self.deadband <= 0.0)
                | ~(np.abs(values - self.last) < self.deadband)  # NaN last: never sent
                | (now - self.last_t >= self.interval)
            )
        if mask is not None:
            send &= mask
        sel = np.flatnonzero(send)
        if sel.size:
            v = values[sel]
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(v) | (v < self.low[sel]) | (v > self.high[sel])
            if bad.any():
                i = int(sel[np.argmax(bad)])
                p = self.points[i]
                raise OutOfRange(p.name, float(values[i]), p.low, p.high)
        return sel

    def sent(self, sel: np.ndarray, values: np.ndarray, now: float) -> None:
        """Note the entries ``sel`` as sent at ``now`` with ``values[sel]``."""
        self.last[sel] = values[sel]
        self.last_t[sel] = now

    def forget(self) -> None:
        """Send everything again on the next write (e.g. after the device restarted)."""
        self.last[:] = np.nan
        self.last_t[:] = -np.inf


class FieldLink(abc.ABC):
    """A client link to one field device over one protocol.

    Attributes:
        name: ``"<protocol>:<endpoint>"``, e.g. ``"opcua:opc.tcp://127.0.0.1:4840/gridtwin/"``.
        points: the points this link carries (reads its ``to_twin`` ones, writes its ``to_field``).
        connected: whether the link is up right now.
        stale_factor: a value older than ``stale_factor * point.interval_s`` is STALE.
        clock: the time source of timestamps and ages (``time.time`` unless one is given).
        backoff_min_s, backoff_max_s: reconnect delay, doubling from min up to max.
        stats: ``reads`` (read responses / notifications), ``writes`` (write requests that
            succeeded), ``errors``, ``reconnects`` (successful), ``last_error`` (str or None);
            concrete links add ``requests`` and ``reconnect_attempts``.
        inputs, outputs: the ``to_twin`` and ``to_field`` points of ``points``.
        polled: whether the owner must call :meth:`poll` to refresh the inputs.

    Subclasses implement ``connect``, ``close``, ``poll`` and ``_send`` and feed input samples
    through ``_store_input``; checks, deadband, staleness and COMMS_LOST marking live here.
    Socket links also implement ``_open`` and ``_discard``: :meth:`_lost` and the reconnect loop
    with its bounded exponential backoff (``backoff_min_s`` doubling up to ``backoff_max_s``)
    live here too.
    """

    protocol: str = "?"
    #: exceptions of :meth:`_open` that count as a failed reconnect attempt (tried again later)
    _retry_on: tuple[type[BaseException], ...] = (CommsLost,)
    #: where the connection messages go (a concrete link sets its own module's logger)
    _log: logging.Logger = _log
    #: period of the link's own background poll task (None: none)
    poll_interval_s: float | None = None

    def __init__(
        self,
        name: str,
        points: Iterable[Point],
        *,
        stale_factor: float = 3.0,
        clock: Callable[[], float] | None = None,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.name = name
        self.points: tuple[Point, ...] = tuple(points)
        self.stale_factor = float(stale_factor)
        self.clock = clock or time.time
        self.connected = False
        self.backoff_min_s = max(float(backoff_min_s), 0.01)  # never 0: no busy loop
        self.backoff_max_s = max(float(backoff_max_s), self.backoff_min_s)
        self._client: Any = None
        self._closing = False
        self._generation = 0  # bumped per client: callbacks of older clients are ignored
        self._reconnect_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.stats: dict[str, Any] = new_stats()
        self._by_name: dict[str, Point] = {p.name: p for p in self.points}
        self.inputs: tuple[Point, ...] = tuple(p for p in self.points if p.direction == "to_twin")
        self.outputs: tuple[Point, ...] = tuple(p for p in self.points if p.direction == "to_field")
        self._cache: dict[str, Sample] = {}
        self._ages: list[tuple[str, float]] = []
        self._ages_key: float | None = None
        self._last_written: dict[str, float] = {}
        self._last_write_time: dict[str, float] = {}
        self._update_event: asyncio.Event | None = None
        #: points of devices cut off behind this link (:meth:`cut`): they read COMMS_LOST
        self.cut_points: set[str] = set()
        #: when (``clock``) the link was last found lost; None: never
        self.lost_at: float | None = None

    # --- the API the sync loop uses ----------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection (and subscriptions).

        Raises CommsLost or HilTimeout (ProtocolError when the device refuses: login, a node
        that does not exist). After a successful connect, a lost link reconnects by itself.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection and cancel every task this link started. Idempotent."""

    @abc.abstractmethod
    async def poll(self) -> None:
        """Refresh all inputs now (polled mode). Raises CommsLost/HilTimeout/ProtocolError."""

    @abc.abstractmethod
    async def _send(self, items: list[tuple[Point, float]]) -> None:
        """Send already-checked output values (one request where the protocol allows)."""

    def read_inputs(self, now: float | None = None) -> dict[str, Sample]:
        """Latest Sample of every ``to_twin`` point of this link. Never raises.

        GOOD values older than ``stale_factor * interval_s`` come back STALE; everything is
        COMMS_LOST while the link is down (value and timestamp of the last sample kept).
        """
        t = self.clock() if now is None else now
        out: dict[str, Sample] = {}
        cache = self._cache
        if self.connected:
            good, stale = Quality.GOOD, Quality.STALE
            for name, max_age in self._max_ages():
                s = cache.get(name)
                if s is None:
                    s = Sample(math.nan, stale, _NEVER)
                elif s.quality is good and t - s.timestamp > max_age:
                    s = Sample(s.value, stale, s.timestamp)
                out[name] = s
        else:
            for p in self.inputs:
                s = cache.get(p.name)
                if s is None:
                    s = Sample(math.nan, Quality.STALE, _NEVER)
                out[p.name] = Sample(s.value, Quality.COMMS_LOST, s.timestamp)
        for n in self.cut_points:
            s = out.get(n)
            if s is not None:
                out[n] = Sample(s.value, Quality.COMMS_LOST, s.timestamp)
        return out

    def good_share(self, now: float | None = None) -> float:
        """The share of this link's inputs that :meth:`read_inputs` calls GOOD now (NaN: the
        link has no inputs)."""
        inputs = self.read_inputs(now)
        ok = Quality.GOOD
        good = sum([s.quality is ok for s in inputs.values()])
        return good / len(inputs) if inputs else math.nan

    def input_arrays(self, now: float | None = None) -> InputArrays:
        """:meth:`read_inputs` as arrays over ``self.inputs`` (the sync loop's vectorised
        path). This default builds them from :meth:`read_inputs`; a link that keeps its
        inputs in arrays returns them directly."""
        from hil.store import QUALITY_CODE

        got = self.read_inputs(now)
        names = tuple(p.name for p in self.inputs)
        n = len(names)
        v = np.full(n, math.nan)
        q = np.full(n, ABSENT, dtype=np.uint8)
        ts = np.zeros(n)
        for i, name in enumerate(names):
            s = got.get(name)
            if s is not None:
                v[i], q[i], ts[i] = s.value, QUALITY_CODE[s.quality], s.timestamp
        return InputArrays(names, v, q, ts)

    def _max_ages(self) -> list[tuple[str, float]]:
        """(name, age beyond which a GOOD value is STALE) per input, for the current
        ``stale_factor``."""
        key = self.stale_factor
        if self._ages_key != key:
            self._ages = [(p.name, key * p.interval_s) for p in self.inputs]
            self._ages_key = key
        return self._ages

    async def write_outputs(self, values: dict[str, float]) -> None:
        """Write ``to_field`` values, all checked first; changes inside the deadband are skipped.

        Raises:
            WriteRejected: a point not on this link, not ``to_field``, or not writable here.
            OutOfRange: NaN/inf or outside ``[low, high]``. Nothing is sent in either case.
        """
        items = [(self.check_write(n, v), float(v)) for n, v in values.items()]
        todo = [
            (p, v)
            for p, v in items
            if p.name not in self.cut_points and not self._within_deadband(p, v)
        ]
        if not todo:
            return
        await self._send(todo)
        t = self.clock()
        for p, v in todo:
            self._last_written[p.name] = v
            self._last_write_time[p.name] = t

    async def write_point(self, name: str, value: float) -> None:
        """Write one command or setpoint now (no deadband: a command is always sent)."""
        point = self.check_write(name, value)
        if name in self.cut_points:
            return  # the device behind the link is cut off: the write goes nowhere
        await self._send([(point, float(value))])
        self._last_written[name] = float(value)
        self._last_write_time[name] = self.clock()

    @property
    def polled(self) -> bool:
        """Whether the owner must call :meth:`poll` to refresh inputs (no subscription, no
        background poll task of the link's own)."""
        return False

    def carries(self, name: str) -> bool:
        """Whether ``name`` is one of this link's points."""
        return name in self._by_name

    def can_write(self, name: str) -> bool:
        """Whether this link carries ``name`` as a ``to_field`` point its protocol can write."""
        p = self._by_name.get(name)
        return p is not None and p.direction == "to_field" and self._not_writable(p) is None

    def why_not_writable(self, point: Point) -> str | None:
        """Why this link's protocol cannot write ``point`` (None when it can)."""
        return self._not_writable(point)

    def cut(self, names: Iterable[str]) -> None:
        """Emulate devices dropping off behind this link (a bus behind an RTU): their points
        read COMMS_LOST and writes to them are dropped; the other points keep flowing."""
        self.cut_points.update(n for n in names if n in self._by_name)

    def restore(self, names: Iterable[str]) -> None:
        """Undo :meth:`cut` for ``names``."""
        self.cut_points.difference_update(names)

    # --- reconcile after a return (issue 11) --------------------------------------------------
    def last_written(self) -> dict[str, float]:
        """The last value this link sent per ``to_field`` point (what the twin believes the
        field holds)."""
        return dict(self._last_written)

    def adopt_field_values(self, values: dict[str, float]) -> None:
        """After a return: take the field's values as what was last written (the twin does
        not silently push its old ones again), and let every other output go out afresh."""
        self._last_written = {n: float(v) for n, v in values.items()}
        self._last_write_time = {n: self.clock() for n in values}

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        """Read ``to_field`` points back from the field (commands, setpoints) now.

        Raises CommsLost/HilTimeout/ProtocolError as :meth:`poll`. Default: not supported.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot read its outputs back")

    # --- shared helpers ----------------------------------------------------------------------
    def point(self, name: str) -> Point:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPoint(f"point {name!r} is not carried by link {self.name}") from None

    def check_write(self, name: str, value: object) -> Point:
        """The point a write of ``value`` to ``name`` would go to; raises instead of sending."""
        point = self._by_name.get(name)
        if point is None:
            raise WriteRejected(
                f"point {name!r}: expected a to_field point carried by link {self.name}, "
                "found none by that name"
            )
        if point.direction != "to_field":
            raise WriteRejected(
                f"point {name!r}: expected direction to_field for a write, found {point.direction}"
            )
        reason = self._not_writable(point)
        if reason:
            raise WriteRejected(f"point {name!r}: {reason}")
        value_within_limits(point, value)
        return point

    def _not_writable(self, point: Point) -> str | None:
        """Why the protocol cannot write ``point`` (None when it can). Overridden per protocol."""
        return None

    def _within_deadband(self, point: Point, value: float) -> bool:
        """Whether a write can be skipped: inside the deadband and refreshed recently.

        A value inside the deadband is still re-sent once per ``interval_s`` so the device's
        copy (and its source timestamp) never goes stale because the twin was quiet.
        """
        last = self._last_written.get(point.name)
        if last is None or point.deadband <= 0.0:
            return False
        if self.clock() - self._last_write_time.get(point.name, _NEVER) >= point.interval_s:
            return False
        return abs(value - last) < point.deadband

    def _store_input(self, name: str, sample: Sample, *, notify: bool = True) -> None:
        """Cache a fresh input sample (concrete links call this) and wake waiters."""
        self._cache[name] = sample
        if notify:
            self._notify()

    def _notify(self) -> None:
        """Wake :meth:`wait_update` waiters (after a poll, or per subscription notification)."""
        if self._update_event is not None:
            self._update_event.set()

    def _note_error(self, exc: BaseException | str) -> None:
        self.stats["errors"] += 1
        self.stats["last_error"] = str(exc)

    async def wait_update(self, timeout: float) -> bool:
        """Wait until new input data arrives (a notification or a finished poll).

        Returns False after ``timeout`` seconds without any.
        """
        if self._update_event is None:
            self._update_event = asyncio.Event()
        self._update_event.clear()
        try:
            await asyncio.wait_for(self._update_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- connection loss and reconnection (socket links) -----------------------------------
    async def _open(self) -> Any:
        """Connect a fresh client and return it; the caller makes it ``self._client``.

        Runs on :meth:`connect` and on every reconnect attempt. Raises one of ``_retry_on``
        when the attempt failed; cancelled, it leaves nothing open.
        """
        raise NotImplementedError(f"{type(self).__name__} does not reconnect")

    def _discard(self, client: Any) -> None:
        """Drop ``client`` without waiting on it (runs on a loss, on close, after a late open)."""
        raise NotImplementedError(f"{type(self).__name__} does not reconnect")

    async def _stop_reconnecting(self) -> None:
        """Cancel the reconnect task, if any, and wait for it (before a connect of our own)."""
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _shut_down(self) -> None:
        """Stop reconnecting and polling and drop the client (the common part of ``close``)."""
        self._closing = True
        self.connected = False
        self._generation += 1
        for task in (self._reconnect_task, self._poll_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._reconnect_task = self._poll_task = None
        if self._client is not None:
            self._discard(self._client)
            self._client = None

    def _start_polling(self) -> None:
        """Start the background poll task unless it runs (on connect, for a self-polling link)."""
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = asyncio.create_task(self._poll_loop(), name=f"{self.name} poll")

    async def _poll_loop(self) -> None:
        """The background poll task: :meth:`poll` every ``poll_interval_s`` while connected.

        A failed poll is logged (debug) and the next one tried; reconnecting is :meth:`_lost`'s.
        """
        assert self.poll_interval_s
        while not self._closing:
            if self.connected:
                try:
                    await self.poll()
                except (CommsLost, HilTimeout, ProtocolError) as exc:
                    self._log.debug("%s poll: %s", self.name, exc)
            await asyncio.sleep(self.poll_interval_s)

    def _lost(self, why: str) -> None:
        """The connection is gone: mark inputs COMMS_LOST and start reconnecting.

        Runs when a request finds the connection broken or a client reports the loss.
        """
        if self._closing:
            return
        if self.connected:
            self._log.warning("%s lost: %s", self.name, why)
            self.lost_at = self.clock()
        self.connected = False
        self._generation += 1  # late callbacks of the old client are ignored from now on
        if self._client is not None:
            self._discard(self._client)
            self._client = None
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"{self.name} reconnect"
            )

    async def _reconnect_loop(self) -> None:
        """Retry :meth:`_open` on a fresh client, with a bounded exponential backoff."""
        delay = self.backoff_min_s
        while not self._closing:
            await asyncio.sleep(delay)
            self.stats["reconnect_attempts"] += 1
            try:
                client = await self._open()
            except self._retry_on as exc:
                self._log.debug(
                    "%s reconnect failed, next try in %.2g s: %s", self.name, delay, exc
                )
                delay = min(delay * 2.0, self.backoff_max_s)
                continue
            if self._closing:  # close() came while connecting
                self._discard(client)
                return
            self._adopt(client)
            self.stats["reconnects"] += 1
            self._log.info("%s reconnected", self.name)
            return

    def _adopt(self, client: Any) -> None:
        """Make a freshly opened client the link's own (on connect and on each reconnect)."""
        self._client = client
        self.connected = True

    async def __aenter__(self) -> FieldLink:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "up" if self.connected else "down"
        return f"<{type(self).__name__} {self.name} {state} points={len(self.points)}>"
