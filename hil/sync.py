"""The sync loop: read field inputs, apply them to the model, solve, write outputs, record.

One step (``await loop.step(t)``)::

    read     links' cached inputs (polled links are polled first)       -> Samples
    apply    GOOD to_twin model inputs, a few vectorised model.update calls
    solve    model.solve() (LoadflowNotConverged: event + alarm, no outputs this step)
    estimate mirror mode only: WLS state estimation and divergence per measured point
    results  hil mode only: the computed measurements taken from the Solution, gathered into
             one value array per link
    write    hil mode only: one request per link (``write_batch`` with the link's vectorised
             deadband where the link has it, else ``write_outputs``); ``write_mode`` says
             whether the step waits for the response or collects it in the next step
    record   recorder.record / event / alarm
    publish  listeners (the twin's own OPC UA server)

Element resolution is done once, at construction, into index arrays per (table, column) and per
link (which output goes where, the recorder's column names), so a step does array work and no
per-point lookups. :meth:`SyncLoop.run` also lets the recorder write its row group in the idle
time before a tick rather than inside a step. The synchronous parts (model, estimation) live in
``twin/``; this module only orchestrates them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hil.errors import HilError
from hil.links.base import ABSENT
from hil.plausibility import Implausible, PlausibilityCheck
from hil.store import GOOD, INVALID, QUALITIES, bulk_enabled
from twin.errors import (
    DeadlineMissed,
    LoadflowNotConverged,
    StaleInputError,
    TwinError,
)
from twin.estimation import (
    Divergence,
    EstimationResult,
    StateEstimator,
    divergences,
    measured_points,
    resolve_element,
)
from twin.pointmap import Point, PointMap, is_heartbeat
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

Mode = Literal["hil", "mirror"]
WriteMode = Literal["await", "pipelined"]
StalePolicy = Literal["hold", "refuse"]
DeadlinePolicy = Literal["skip", "catch_up", "stop"]

PHASES: tuple[str, ...] = (
    "read",
    "apply",
    "solve",
    "estimate",
    "results",
    "write",
    "record",
    "publish",
)

#: Model columns a to_twin point may set with GridModel.update. Device columns (switch.cmd,
#: trafo.avr_*, line.oc_*, sgen.p_limit_pct ...) are never in this set: the twin never applies
#: them. Measurements of flows and voltages are not inputs either; in mirror mode they feed the
#: estimator.
INPUT_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {
        ("switch", "closed"),
        ("trafo", "tap_pos"),
        ("load", "p_mw"),
        ("load", "q_mvar"),
        ("sgen", "p_mw"),
        ("sgen", "q_mvar"),
        ("gen", "p_mw"),
        ("storage", "p_mw"),
    }
)
#: Inputs whose measured value is the scaled one (pandapower: actual = p_mw * scaling).
_SCALED: frozenset[tuple[str, str]] = frozenset(
    {("load", "p_mw"), ("load", "q_mvar"), ("sgen", "p_mw"), ("sgen", "q_mvar")}
)
_BOOL_COLUMNS = frozenset({("switch", "closed")})
_INT_COLUMNS = frozenset({("trafo", "tap_pos")})


def is_device_column(table: str, column: str) -> bool:
    """Whether ``table.column`` lives only in the field device or is computed by the twin
    (never applied to the model): ``twin.pointmap``'s vocabulary, the one (table, column) list."""
    from twin.pointmap import TWIN_COLUMNS
    from twin.pointmap import is_device_column as _device

    return _device(table, column) or column in TWIN_COLUMNS.get(table, ())


# --- reports and alarms ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm raised by the loop: a divergence, a non-converged load flow, a stale refusal."""

    time_s: float
    kind: str  # "divergence" | "not_converged" | "stale" | "implausible"
    point: str
    field_value: float
    twin_value: float
    tolerance: float
    message: str


@dataclass
class StepReport:
    """What one step did. Durations are seconds (perf_counter) per phase."""

    t: float
    durations: dict[str, float] = field(default_factory=dict)
    converged: bool = False
    iterations: int = 0
    stale: tuple[str, ...] = ()
    #: inputs held this step because their value was implausible (hil.plausibility)
    implausible: tuple[str, ...] = ()
    alarms: tuple[Alarm, ...] = ()
    cleared: tuple[str, ...] = ()
    applied: int = 0
    written: int = 0
    error: str = ""
    estimation: EstimationResult | None = None
    divergences: tuple[Divergence, ...] = ()

    @property
    def total_s(self) -> float:
        return sum(self.durations.values())


class _Ring:
    """A bounded ring buffer of durations with numpy percentiles."""

    def __init__(self, size: int) -> None:
        self._buf = np.zeros(int(size))
        self._n = 0

    def add(self, x: float) -> None:
        self._buf[self._n % len(self._buf)] = x
        self._n += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))]

    def summary(self) -> dict[str, float]:
        v = self.values()
        if not len(v):
            return {"n": 0, "p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan}
        p50, p99 = np.percentile(v, [50, 99])
        return {
            "n": int(self._n),
            "p50_ms": float(p50) * 1e3,
            "p99_ms": float(p99) * 1e3,
            "max_ms": float(v.max()) * 1e3,
            "mean_ms": float(v.mean()) * 1e3,
        }


@dataclass
class _Group:
    """The to_twin points of one (table, column): applied in one model.update."""

    table: str
    column: str
    names: list[str]
    index: np.ndarray  # pandapower indices
    scaling: np.ndarray | None  # divide the measured value by this (load/sgen P, Q)
    last: np.ndarray  # last applied (model-side) values, NaN before the first


@dataclass
class _OutGroup:
    """The to_field measurement points of one (table, column), with their link routing."""

    table: str
    column: str
    names: list[str]
    positions: np.ndarray  # row positions in the table (Solution arrays are in table order)
    links: list[int]  # index into SyncLoop.links per point
    low: np.ndarray
    high: np.ndarray
    columns: list[str] = field(default_factory=list)  # recorder column per point
    enabled: bool = True  # False once the Solution had no such result
    values: np.ndarray | None = None  # this step's values (NaN -> 0) and which are in range
    ok: np.ndarray | None = None


@dataclass
class _LinkOutputs:
    """Everything one link writes per step, gathered from the groups into one array."""

    link: int
    names: list[str]
    sources: list[tuple[int, np.ndarray, np.ndarray]]  # (group, rows in group, slots here)
    values: np.ndarray
    valid: np.ndarray
    batch: Any = None  # the link's prepared output set (links with write_batch), else None


class _Outputs(Mapping[str, float]):
    """A step's computed outputs (point name -> value, in-range ones only) over the groups'
    arrays: the dict is built on first use, not on every step."""

    __slots__ = ("_parts", "_dict")

    def __init__(self, parts: list[tuple[list[str], np.ndarray, np.ndarray]]) -> None:
        self._parts = parts
        self._dict: dict[str, float] | None = None

    def _d(self) -> dict[str, float]:
        d = self._dict
        if d is None:
            d = {}
            for names, vals, ok in self._parts:
                if ok.all():
                    d.update(zip(names, vals.tolist()))
                else:
                    d.update(zip([n for n, k in zip(names, ok) if k], vals[ok].tolist()))
            self._dict = d
        return d

    def __getitem__(self, name: str) -> float:
        return self._d()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d())

    def __len__(self) -> int:
        return len(self._d())

    def __bool__(self) -> bool:
        return any(ok.any() for _, _, ok in self._parts)

    def __repr__(self) -> str:
        return repr(self._d())


class _SampleView(Mapping[str, Sample]):
    """A step's samples (point name -> Sample) over the arrays the links gave: a Sample is
    made only for a name someone asks for (the vectorised read path)."""

    __slots__ = ("_index", "_names", "v", "q", "ts", "_lists")

    def __init__(
        self,
        index: Mapping[str, int],
        names: Sequence[str],
        values: np.ndarray,
        quality: np.ndarray,
        stamps: np.ndarray,
    ) -> None:
        self._index = index
        self._names = names
        self.v = values
        self.q = quality
        self.ts = stamps
        self._lists: tuple[list[float], list[int], list[float]] | None = None

    def changed(self) -> None:
        """The arrays were changed in place (qualities marked INVALID)."""
        self._lists = None

    def __getitem__(self, name: str) -> Sample:
        i = self._index[name]
        lists = self._lists
        if lists is None:  # Python floats and ints, made once for every lookup of the step
            lists = self._lists = (self.v.tolist(), self.q.tolist(), self.ts.tolist())
        c = lists[1][i]
        if c == ABSENT:
            raise KeyError(name)
        return Sample(lists[0][i], QUALITIES[c], lists[2][i])

    def __contains__(self, name: object) -> bool:
        i = self._index.get(name) if isinstance(name, str) else None
        return i is not None and int(self.q[i]) != ABSENT

    def __iter__(self) -> Iterator[str]:
        names = self._names
        return (names[i] for i in np.flatnonzero(self.q != ABSENT).tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.q != ABSENT))

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass
class _BulkRead:
    """The vectorised read path's layout, resolved once: the input-carrying links, the names
    they carry (first appearance, in link order) and where each link's and each loop input's
    entries sit among them."""

    sources: list[Any]
    names: tuple[str, ...]
    index: dict[str, int]
    per_link: list[np.ndarray]  # per source: the positions of its inputs among ``names``
    in_pos: np.ndarray  # per SyncLoop.inputs entry
    used_pos: np.ndarray  # per SyncLoop._used_names entry


Listener = Callable[["SyncLoop", StepReport, Any], Awaitable[None] | None]


class SyncLoop:
    """Keep a GridModel in step with field links.

    Args:
        model: a ``twin.GridModel`` (``net``, ``update``, ``solve``).
        pointmap: the point map shared with the field.
        links: connected (or connecting) ``hil.links`` FieldLinks.
        mode: ``"hil"`` (the twin is the plant and writes computed measurements) or ``"mirror"``
            (the field is the plant; the twin estimates and flags divergence).
        period_s: step period of :meth:`run`.
        recorder: a ``twin.recorder.Recorder`` or None.
        stale_policy: for the inputs a step uses (applied or estimated from): ``"hold"`` keeps
            the last good value of a stale input and flags the point; ``"refuse"`` raises
            StaleInputError (recorded as an event and alarm).
        deadline_policy: what :meth:`run` does when a step overruns its period: ``"skip"`` the
            missed ticks, ``"catch_up"`` (run them back to back, at most ``max_catch_up``) or
            ``"stop"`` (raise DeadlineMissed).
        estimator: mirror mode's ``twin.estimation.StateEstimator``; built from the model's net
            and the point map when None.
        clock: seconds, monotonic (used for deadlines); ``sleep``: the matching async sleep.
        link_now: passed as ``now`` to ``read_inputs`` (None: each link's own clock).
        stop_on_not_converged: raise LoadflowNotConverged out of :meth:`step` instead of going on.
        history: durations kept per phase for the percentiles.
        heartbeat_s: between steps, the heartbeat is also written every ``heartbeat_s`` wall
            seconds (a realtime run with 1-min steps keeps a device's 10 s watchdog fed);
            None: only each step writes it.
        write_mode: ``"await"`` (default): a step's write phase waits for every link's write
            response, so a step ends with the field holding its values and write errors belong
            to that step. ``"pipelined"``: the step encodes and sends its request and goes on;
            the response (the device's own processing time) is collected by the next step,
            which reports its errors and counts its values in ``written``. At most one request
            per link is in flight: while one is, that link's writes are skipped (counted as
            ``writes_busy``) and the changed values go with the next request. The time from
            send to response is kept as ``"write_ack"`` (:meth:`phase_durations`, ``stats()``).
        plausibility: check every input against its plausibility limits (``hil.plausibility``:
            an implausible value is INVALID, alarmed and held at its last good value); False
            takes every GOOD value as it comes.
    """

    def __init__(
        self,
        model: Any,
        pointmap: PointMap,
        links: Sequence[Any],
        *,
        mode: Mode = "hil",
        period_s: float = 0.1,
        recorder: Any = None,
        stale_policy: StalePolicy = "hold",
        deadline_policy: DeadlinePolicy = "skip",
        estimator: StateEstimator | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        link_now: Callable[[], float] | None = None,
        max_catch_up: int = 10,
        stop_on_not_converged: bool = False,
        history: int = 4096,
        record_values: bool = True,
        write_mode: WriteMode = "await",
        plausibility: bool = True,
        heartbeat_s: float | None = 1.0,
    ) -> None:
        _check_choice("mode", mode, ("hil", "mirror"))
        _check_choice("stale_policy", stale_policy, ("hold", "refuse"))
        _check_choice("deadline_policy", deadline_policy, ("skip", "catch_up", "stop"))
        _check_choice("write_mode", write_mode, ("await", "pipelined"))
        if not (period_s > 0 and math.isfinite(period_s)):
            raise ValueError(f"period_s: expected a finite number > 0, found {period_s!r}")
        self.model = model
        self.pointmap = pointmap
        self.links = list(links)
        self.mode: Mode = mode
        self.period_s = float(period_s)
        self.recorder = recorder
        self.stale_policy: StalePolicy = stale_policy
        self.deadline_policy: DeadlinePolicy = deadline_policy
        self.clock = clock
        self.sleep = sleep
        self.link_now = link_now
        self.max_catch_up = int(max_catch_up)
        self.stop_on_not_converged = bool(stop_on_not_converged)
        self.record_values = bool(record_values)
        self.write_mode: WriteMode = write_mode
        self._in_flight: dict[int, asyncio.Task[int]] = {}  # pipelined writes, per link
        self._rows_since_flush = 0  # rows recorded since the recorder last wrote a row group
        self.listeners: list[Listener] = []
        #: every alarm raised, newest last (bounded)
        self.alarms: deque[Alarm] = deque(maxlen=1000)
        #: alarms standing now, by point name (divergence alarms clear when back in band)
        self.active_alarms: dict[str, Alarm] = {}
        #: last samples read (point name -> Sample) and last outputs computed (name -> value)
        self.samples: Mapping[str, Sample] = {}
        self.outputs: Mapping[str, float] = {}
        self.last_report: StepReport | None = None
        self.last_solution: Any = None
        self._stopping = False
        self._hist = {ph: _Ring(history) for ph in (*PHASES, "step", "write_ack")}
        self._counters = {
            "steps": 0,
            "not_converged": 0,
            "stale_steps": 0,
            "refused": 0,
            "misses": 0,
            "skipped_ticks": 0,
            "caught_up_ticks": 0,
            "write_errors": 0,
            "writes_busy": 0,
            "idle_flushes": 0,
            "poll_errors": 0,
            "apply_errors": 0,
            "alarms": 0,
            "estimation_failures": 0,
            "idle_heartbeats": 0,
            "implausible": 0,
        }
        net = model.net
        carried: dict[str, Point] = {}
        for link in self.links:
            for p in link.points:
                carried.setdefault(p.name, p)
        self.inputs: tuple[Point, ...] = tuple(
            p for p in pointmap.points if p.direction == "to_twin" and p.name in carried
        )
        self._groups = self._build_input_groups(net)
        # plausibility limits of every input, as arrays; the groups read their values from it
        self.plausibility = PlausibilityCheck(net, self.inputs, enabled=plausibility)
        self._group_pos = [self.plausibility.column(g.names) for g in self._groups]
        self._pending_alarms: list[Alarm] = []
        self._cleared: list[str] = []
        # the model-side inputs of the last converged step (to name what changed when one
        # does not converge), starting from the net's own values
        self._good_inputs = [_model_values(net, g) for g in self._groups]
        self._good_t: float | None = None
        self._labels = {p.name: _label(p) for p in pointmap.points}
        self._out_groups = self._build_output_groups(net) if mode == "hil" else []
        self._link_outs = self._build_link_outputs()
        self._in_columns = [self._column(p) for p in self.inputs]
        self._poll_links = [lk for lk in self.links if _needs_poll(lk)]
        self.measured: tuple[Point, ...] = ()
        self.estimator: StateEstimator | None = None
        if mode == "mirror":
            self.measured = tuple(measured_points(self.inputs))
            self.estimator = estimator or StateEstimator(net, self.measured)
        # the inputs a step depends on: applied to the model or fed to the estimator; only these
        # are checked by the stale policy (a device's operation counter does not stop a step)
        used = {n for g in self._groups for n in g.names} | {p.name for p in self.measured}
        self._used_inputs: tuple[Point, ...] = tuple(p for p in self.inputs if p.name in used)
        self._used_names: tuple[str, ...] = tuple(p.name for p in self._used_inputs)
        #: the vectorised read path (``GRIDTWIN_BULK=0``: the per-point reference), or None
        #: where a link cannot give arrays
        self._bulk: _BulkRead | None = self._build_bulk_read() if bulk_enabled() else None
        if heartbeat_s is not None and not (heartbeat_s > 0 and math.isfinite(heartbeat_s)):
            raise ValueError(f"heartbeat_s: expected a finite number > 0, found {heartbeat_s!r}")
        self.heartbeat_s = None if heartbeat_s is None else float(heartbeat_s)
        self._init_watchdogs()

    # --- construction helpers -----------------------------------------------------------------
    def _build_input_groups(self, net: Any) -> list[_Group]:
        by_key: dict[tuple[str, str], list[Point]] = {}
        for p in self.inputs:
            key = (p.table, p.column)
            if key not in INPUT_COLUMNS or is_device_column(p.table, p.column):
                continue
            by_key.setdefault(key, []).append(p)
        groups = []
        for (table, column), pts in by_key.items():
            idx = np.array([resolve_element(net, p) for p in pts], dtype=np.int64)
            scaling = None
            if (table, column) in _SCALED and "scaling" in net[table]:
                s = net[table]["scaling"].reindex(idx).to_numpy(dtype=float)
                s[~np.isfinite(s) | (s == 0.0)] = 1.0
                scaling = s if np.any(s != 1.0) else None
            groups.append(
                _Group(
                    table, column, [p.name for p in pts], idx, scaling, np.full(len(pts), np.nan)
                )
            )
        return groups

    def _build_output_groups(self, net: Any) -> list[_OutGroup]:
        by_key: dict[tuple[str, str], list[tuple[Point, int]]] = {}
        for p in self.pointmap.points:
            if p.direction != "to_field" or p.kind != "measurement":
                continue
            if is_device_column(p.table, p.column) or p.table not in net:
                continue
            li = self._route(p)
            if li is None:
                continue
            by_key.setdefault((p.table, p.column), []).append((p, li))
        groups = []
        for (table, column), items in by_key.items():
            idx = [resolve_element(net, p) for p, _ in items]
            pos = net[table].index.get_indexer(idx)
            groups.append(
                _OutGroup(
                    table,
                    column,
                    [p.name for p, _ in items],
                    np.asarray(pos, dtype=np.int64),
                    [li for _, li in items],
                    np.array([-np.inf if p.low is None else p.low for p, _ in items]),
                    np.array([np.inf if p.high is None else p.high for p, _ in items]),
                    [self._column(p) for p, _ in items],
                )
            )
        return groups

    def _build_link_outputs(self) -> list[_LinkOutputs]:
        """Per link: the output names in one fixed order and where each value comes from."""
        slots: dict[int, list[tuple[int, int, str]]] = {}
        for gi, g in enumerate(self._out_groups):
            for row, (n, li) in enumerate(zip(g.names, g.links)):
                slots.setdefault(li, []).append((gi, row, n))
        outs = []
        for li, items in slots.items():
            names = [n for _, _, n in items]
            sources = []
            gis = np.array([gi for gi, _, _ in items])
            rows = np.array([row for _, row, _ in items])
            for gi in np.unique(gis):
                here = np.flatnonzero(gis == gi)
                sources.append((int(gi), rows[here], here))
            link = self.links[li]
            batch = None
            if hasattr(link, "prepare_outputs") and hasattr(link, "write_batch"):
                batch = link.prepare_outputs(names)
            outs.append(
                _LinkOutputs(
                    li, names, sources, np.zeros(len(names)), np.zeros(len(names), bool), batch
                )
            )
        return outs

    def _build_bulk_read(self) -> _BulkRead | None:
        sources = [lk for lk in self.links if getattr(lk, "inputs", True)]
        if not all(hasattr(lk, "input_arrays") for lk in sources):
            return None
        names: list[str] = []
        index: dict[str, int] = {}
        per_link = []
        for lk in sources:
            for p in lk.inputs:
                if p.name not in index:
                    index[p.name] = len(names)
                    names.append(p.name)
            per_link.append(np.array([index[p.name] for p in lk.inputs], dtype=np.intp))
        if any(p.name not in index for p in self.inputs):
            return None
        in_pos = np.array([index[p.name] for p in self.inputs], dtype=np.intp)
        used_pos = np.array([index[n] for n in self._used_names], dtype=np.intp)
        return _BulkRead(sources, tuple(names), index, per_link, in_pos, used_pos)

    def _route(self, point: Point) -> int | None:
        """The first link that carries ``point`` and can write it (None: no link can)."""
        for i, link in enumerate(self.links):
            if link.carries(point.name) and link.why_not_writable(link.point(point.name)) is None:
                return i
        return None

    # --- one step -------------------------------------------------------------------------------
    async def step(self, t: float) -> StepReport:
        """Run one step at (simulated or wall) time ``t`` and return its report.

        Raises:
            StaleInputError: an input is not GOOD and ``stale_policy`` is ``"refuse"``.
            LoadflowNotConverged: only with ``stop_on_not_converged``.
        """
        await self._settle_idle_beat()
        self._in_step = True
        try:
            return await self._step(t)
        finally:
            self._in_step = False
            self._arm_idle_beat()

    async def _step(self, t: float) -> StepReport:
        rep = StepReport(t=t)
        d = rep.durations
        new_alarms: list[Alarm] = []
        pc = time.perf_counter

        t0 = pc()
        samples = await self._read()
        self.samples = samples
        t1 = pc()
        d["read"] = t1 - t0

        try:
            rep.applied, stale = self._apply(samples, t)
        finally:
            d["apply"] = pc() - t1
        rep.stale = tuple(stale)
        new_alarms.extend(self._plausibility_report(rep))
        if stale:
            self._counters["stale_steps"] += 1

        t2 = pc()
        sol = None
        try:
            sol = self.model.solve()
            rep.converged = bool(getattr(sol, "converged", True))
            rep.iterations = int(getattr(sol, "iterations", 0))
        except LoadflowNotConverged as exc:
            rep.converged = False
            changed = self._changed_inputs()
            msg = str(exc) + _changed_text(changed, self._good_t)
            rep.error = msg
            rep.iterations = exc.iterations
            self._counters["not_converged"] += 1
            a = Alarm(t, "not_converged", "", math.nan, math.nan, math.nan, msg)
            new_alarms.append(a)
            self._event(
                t,
                "not_converged",
                msg,
                worst_bus=exc.worst_bus,
                changed=";".join(f"{n} {old:.6g} -> {new:.6g}" for n, old, new, _ in changed),
            )
            if self.stop_on_not_converged:
                d["solve"] = pc() - t2
                self._finish(rep, new_alarms)
                raise
        t3 = pc()
        d["solve"] = t3 - t2

        if self.mode == "mirror":
            await self._estimate(samples, sol, t, rep, new_alarms)
        t4 = pc()
        d["estimate"] = t4 - t3

        await self._reconcile_returned_links(t)
        outputs: Mapping[str, float] = {}
        if self.mode == "hil" and sol is not None and rep.converged:
            outputs = self._outputs(sol)
            t45 = pc()
            d["results"] = t45 - t4
            rep.written = await self._write(outputs, t)
        else:
            t45 = t4
        self.outputs = outputs
        await self._heartbeat_outputs(t)
        t5 = pc()
        d["write"] = t5 - t45

        if self.recorder is not None:
            self._record(t, samples, outputs, new_alarms)
        # replacing the previous Solution frees its result tables: housekeeping, counted here
        self.last_solution = sol
        t6 = pc()
        d["record"] = t6 - t5
        self._finish(rep, new_alarms)

        for listener in list(self.listeners):
            try:
                res = listener(self, rep, sol)
                if inspect.isawaitable(res):
                    await res
            except Exception:  # a publisher must not stop the loop
                _log.exception("sync-loop listener failed at t=%s", t)
        d["publish"] = pc() - t6
        for ph in PHASES:
            self._hist[ph].add(d.get(ph, 0.0))
        self._hist["step"].add(pc() - t0)
        return rep

    def _finish(self, rep: StepReport, new_alarms: list[Alarm]) -> None:
        rep.alarms = tuple(new_alarms)
        self._counters["steps"] += 1
        self._counters["alarms"] += len(new_alarms)
        self.alarms.extend(new_alarms)
        self.last_report = rep

    async def _read(self) -> Mapping[str, Sample]:
        polled = [lk for lk in self._poll_links if lk.connected]
        if len(polled) == 1:  # the usual case: no gather (a task per link per step)
            try:
                await polled[0].poll()
            except Exception as exc:
                self._poll_failed(exc)
        elif polled:
            results = await asyncio.gather(*(lk.poll() for lk in polled), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self._poll_failed(r)
        now = self.link_now() if self.link_now is not None else None
        if self._bulk is not None:
            return self._read_arrays(self._bulk, now)
        sources = [lk for lk in self.links if getattr(lk, "inputs", True)]  # none: no samples
        if len(sources) == 1:
            return sources[0].read_inputs(now)
        merged: dict[str, Sample] = {}
        for link in sources:
            for name, s in link.read_inputs(now).items():
                old = merged.get(name)
                # Several links may carry a point: a GOOD sample wins, then the newest.
                if (
                    old is None
                    or (s.quality.is_good and not old.quality.is_good)
                    or (s.quality.is_good == old.quality.is_good and s.timestamp > old.timestamp)
                ):
                    merged[name] = s
        return merged

    def _read_arrays(self, b: _BulkRead, now: float | None) -> _SampleView:
        """The links' inputs as one set of arrays over ``b.names`` (several links carrying a
        point: a GOOD sample wins, then the newest, as the per-point merge)."""
        if len(b.sources) == 1:
            a = b.sources[0].input_arrays(now)
            return _SampleView(b.index, b.names, a.values, a.quality, a.stamps)
        n = len(b.names)
        v = np.full(n, math.nan)
        q = np.full(n, ABSENT, dtype=np.uint8)
        ts = np.zeros(n)
        for link, pos in zip(b.sources, b.per_link):
            a = link.input_arrays(now)
            oq = q[pos]
            new_good = a.quality == GOOD
            old_good = oq == GOOD
            take = (a.quality != ABSENT) & (
                (oq == ABSENT)
                | (new_good & ~old_good)
                | ((new_good == old_good) & (a.stamps > ts[pos]))
            )
            if take.any():
                at = pos[take]
                v[at] = a.values[take]
                q[at] = a.quality[take]
                ts[at] = a.stamps[take]
        return _SampleView(b.index, b.names, v, q, ts)

    def _poll_failed(self, r: BaseException) -> None:
        if not isinstance(r, (HilError, OSError, TimeoutError)):
            raise r
        self._counters["poll_errors"] += 1
        _log.debug("poll failed: %s", r)

    def _apply(self, samples: Mapping[str, Sample], t: float) -> tuple[int, list[str]]:
        """Apply GOOD to_twin inputs; returns (values applied, points not GOOD)."""
        b = self._bulk
        view = samples if b is not None and isinstance(samples, _SampleView) else None
        if view is not None:
            assert b is not None
            uq, uv = view.q[b.used_pos], view.v[b.used_pos]
            bad = (uq != GOOD) | ~np.isfinite(uv)
            used = self._used_names
            stale = [used[i] for i in np.flatnonzero(bad).tolist()] if bad.any() else []
        else:
            good, isfinite = Quality.GOOD, math.isfinite
            stale = [
                n
                for n in self._used_names
                if (s := samples.get(n)) is None or s.quality is not good or not isfinite(s.value)
            ]
        if stale and self.stale_policy == "refuse":
            self._counters["refused"] += 1
            qual = {n: (samples[n].quality.value if n in samples else "missing") for n in stale}
            shown = ", ".join(f"{n} ({q})" for n, q in list(qual.items())[:10])
            more = f" and {len(stale) - 10} more" if len(stale) > 10 else ""
            msg = (
                f"step at t={t:.3f} s refused: expected GOOD inputs, found {len(stale)} not GOOD: "
                f"{shown}{more}"
            )
            self._event(t, "stale_refused", msg, points=len(stale))
            a = Alarm(t, "stale", stale[0], math.nan, math.nan, math.nan, msg)
            self.alarms.append(a)
            self._counters["alarms"] += 1
            if self.recorder is not None:
                self.recorder.alarm(t, stale[0], math.nan, math.nan, math.nan, msg)
            raise StaleInputError(msg)
        last = self.last_report
        if last is None or last.converged:
            # the inputs as of the last converged step: what a failing step is compared with
            for base, g in zip(self._good_inputs, self._groups):
                np.copyto(base, g.last, where=np.isfinite(g.last))
            self._good_t = None if last is None else last.t
        # implausible values become INVALID in ``samples`` and NaN here: held, not applied
        if view is not None:
            assert b is not None
            iq = view.q[b.in_pos]
            raw = np.where(iq == GOOD, view.v[b.in_pos], math.nan)
            started, ended, bad_idx = self.plausibility.screen_values(raw, t)
            if bad_idx.size:
                view.q[b.in_pos[bad_idx]] = INVALID
                view.changed()
        else:
            if not isinstance(samples, dict):
                samples = dict(samples)
            started, ended = self.plausibility.screen(samples, t)
        if started or ended:
            self._on_implausible(started, ended, t)
        values = self.plausibility.values
        applied = 0
        for g, pos in zip(self._groups, self._group_pos):
            vals = values[pos]  # NaN: not GOOD or implausible
            if g.scaling is not None:
                vals = vals / g.scaling
            # Held points (not GOOD) keep what the model has; unchanged values are not re-sent,
            # so a switch that did not move does not touch the compiled topology.
            mask = np.isfinite(vals) & ~(vals == g.last)
            if not mask.any():
                continue
            applied += self._update(g, vals, mask, t)
        return applied, stale

    def _update(self, g: _Group, vals: np.ndarray, mask: np.ndarray, t: float) -> int:
        key = (g.table, g.column)
        idx = g.index[mask]
        new = vals[mask]
        if key in _BOOL_COLUMNS:
            out: Any = new >= 0.5
            new = out.astype(float)
        elif key in _INT_COLUMNS:
            new = np.round(new)
            out = new.astype(np.int64)
        else:
            out = new
        try:
            self.model.update(g.table, g.column, out, index=idx)
        except (TwinError, ValueError) as exc:
            # One bad value rejects the whole vectorised update: retry one by one so the good
            # ones still go in, and report the bad ones.
            self._counters["apply_errors"] += 1
            self._event(t, "apply_error", str(exc), table=g.table, column=g.column)
            done = 0
            for j, (e, v, nv) in enumerate(zip(idx, np.atleast_1d(out), new)):
                try:
                    self.model.update(g.table, g.column, [v], index=[int(e)])
                except (TwinError, ValueError) as exc1:
                    _log.warning("input %s not applied: %s", g.names[j], exc1)
                    continue
                g.last[np.flatnonzero(mask)[j]] = nv
                done += 1
            return done
        g.last[mask] = new
        return int(mask.sum())

    def _on_implausible(
        self, started: list[Implausible], ended: list[Implausible], t: float
    ) -> None:
        """Alarm (once) the inputs that became implausible; clear those plausible again."""
        rec = self.recorder
        for im in started:
            a = Alarm(t, "implausible", im.point, im.value, im.held, im.limit, im.message)
            self.active_alarms.setdefault(im.point, a)
            self._pending_alarms.append(a)
            self._counters["implausible"] += 1
            _log.warning("t=%.3f %s", t, im.message)
            self._event(t, "implausible", im.message, point=im.point)
            if rec is not None:  # the record phase writes divergence/not_converged alarms only
                rec.alarm(t, im.point, im.value, im.held, im.limit, im.message)
        for im in ended:
            standing = self.active_alarms.get(im.point)
            if standing is not None and standing.kind == "implausible":
                del self.active_alarms[im.point]
            self._cleared.append(im.point)
            self._event(t, "alarm_cleared", im.message, point=im.point)

    def _plausibility_report(self, rep: StepReport) -> list[Alarm]:
        """This step's implausible inputs into its report; returns the alarms they raised."""
        if self.plausibility.active.any():
            rep.implausible = tuple(self.plausibility.implausible_now())
        if self._cleared:
            rep.cleared = rep.cleared + tuple(self._cleared)
            self._cleared = []
        out, self._pending_alarms = self._pending_alarms, []
        return out

    def _changed_inputs(self, limit: int = 20) -> list[tuple[str, float, float, float]]:
        """Inputs applied since the last converged step: (name, old, new, relative change) in
        field units, the largest relative change first, at most ``limit``."""
        out: list[tuple[str, float, float, float]] = []
        for base, g in zip(self._good_inputs, self._groups):
            now = np.where(np.isfinite(g.last), g.last, base)
            diff = np.abs(now - base)
            moved = np.flatnonzero(diff > 0)
            if not len(moved):
                continue
            scale = g.scaling[moved] if g.scaling is not None else 1.0
            old = base[moved] * scale
            new = now[moved] * scale
            rel = np.abs(new - old) / np.maximum(np.abs(old), 1e-3)
            out.extend(
                (g.names[int(i)], float(o), float(n), float(r))
                for i, o, n, r in zip(moved, old, new, rel)
            )
        out.sort(key=lambda x: -x[3])
        return out[:limit]

    async def _estimate(
        self,
        samples: Mapping[str, Sample],
        sol: Any,
        t: float,
        rep: StepReport,
        new_alarms: list[Alarm],
    ) -> None:
        est = self.estimator
        twin_values: dict[str, float] = {}
        if est is not None and self.measured:
            est.sync_from(self.model.net)
            # The estimation is CPU work on the estimator's own net copy: run it off the event
            # loop so subscriptions and the twin server keep being served.
            res = await asyncio.to_thread(est.estimate, samples)
            rep.estimation = res
            if res.success:
                twin_values = res.estimates
            else:
                self._counters["estimation_failures"] += 1
                self._event(t, "estimation_failed", res.error)
        if not twin_values and sol is not None and rep.converged:
            twin_values = self._solution_values(sol, self.measured)
        divs = divergences(self.measured, samples, twin_values, t)
        rep.divergences = tuple(divs)
        cleared = []
        for dv in divs:
            if dv.exceeded:
                if dv.point not in self.active_alarms:
                    a = Alarm(
                        t,
                        "divergence",
                        dv.point,
                        dv.field_value,
                        dv.twin_value,
                        dv.tolerance,
                        dv.message,
                    )
                    self.active_alarms[dv.point] = a
                    new_alarms.append(a)
            elif dv.point in self.active_alarms:
                del self.active_alarms[dv.point]
                cleared.append(dv.point)
                self._event(t, "alarm_cleared", f"{dv.point} back within its tolerance band")
        rep.cleared = rep.cleared + tuple(cleared)

    def _solution_values(self, sol: Any, points: Iterable[Point]) -> dict[str, float]:
        net = self.model.net
        out: dict[str, float] = {}
        for p in points:
            try:
                arr = sol.get(p.table, p.column)
                pos = net[p.table].index.get_loc(resolve_element(net, p))
                out[p.name] = float(arr[pos])
            except (KeyError, TwinError, IndexError, AttributeError):
                continue
        return out

    def _outputs(self, sol: Any) -> Mapping[str, float]:
        """This step's computed outputs: into the groups' arrays and each link's batch; the
        returned name -> value mapping is only built when someone reads it."""
        parts: list[tuple[list[str], np.ndarray, np.ndarray]] = []
        for g in self._out_groups:
            if not g.enabled:
                continue
            try:
                arr = np.asarray(sol.get(g.table, g.column), dtype=float)
            except (KeyError, AttributeError, TwinError) as exc:
                _log.warning("no result %s.%s to write: %s", g.table, g.column, exc)
                g.enabled = False  # do not try again every step
                g.values = g.ok = None
                continue
            vals = arr[g.positions]
            # A de-energised element reads zero on a real RTU; pandapower gives NaN.
            vals[~np.isfinite(vals)] = 0.0
            ok = (vals >= g.low) & (vals <= g.high)
            g.values, g.ok = vals, ok
            parts.append((g.names, vals, ok))
        groups = self._out_groups
        for lo in self._link_outs:
            for gi, rows, here in lo.sources:
                g = groups[gi]
                if g.values is None or g.ok is None:
                    lo.valid[here] = False
                    continue
                lo.values[here] = g.values[rows]
                lo.valid[here] = g.ok[rows]
        return _Outputs(parts)

    async def _write(self, outputs: Mapping[str, float], t: float) -> int:
        if self.write_mode == "pipelined":
            return await self._write_pipelined(t)
        todo = [lo for lo in self._link_outs if self.links[lo.link].connected and lo.valid.any()]
        if not todo:
            return 0
        results: list[int | BaseException]
        if len(todo) == 1:  # the usual case: no gather (a task per link per step)
            try:
                results = [await self._write_link(todo[0])]
            except Exception as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(self._write_link(lo) for lo in todo), return_exceptions=True
            )
        written = 0
        for lo, r in zip(todo, results):
            written += self._write_result(lo, r, t)
        return written

    def _write_result(self, lo: _LinkOutputs, r: int | BaseException, t: float) -> int:
        if isinstance(r, BaseException):
            if not isinstance(r, (HilError, OSError, TimeoutError)):
                raise r
            self._counters["write_errors"] += 1
            self._event(t, "write_error", str(r), link=self.links[lo.link].name)
            return 0
        return int(r)

    async def _write_pipelined(self, t: float) -> int:
        """Collect finished writes, then send this step's (see ``write_mode``)."""
        written = 0
        started = []
        for lo in self._link_outs:
            task = self._in_flight.get(lo.link)
            if task is not None:
                if not task.done():
                    self._counters["writes_busy"] += 1
                    continue
                del self._in_flight[lo.link]
                written += self._write_result(lo, _task_outcome(task), t)
            if not self.links[lo.link].connected or not lo.valid.any():
                continue
            # the task gets copies: the next step's gather overwrites lo.values
            task = asyncio.get_running_loop().create_task(
                self._timed_write(lo, lo.values.copy(), lo.valid.copy()),
                name=f"sync write {self.links[lo.link].name}",
            )
            self._in_flight[lo.link] = task
            started.append(task)
        if started:
            # let the writes encode and send now, inside the write phase; their responses come
            # while the loop waits for the next tick
            await asyncio.sleep(0)
        return written

    async def _timed_write(self, lo: _LinkOutputs, values: np.ndarray, valid: np.ndarray) -> int:
        t0 = time.perf_counter()
        n = await self._write_link(lo, values, valid)
        self._hist["write_ack"].add(time.perf_counter() - t0)
        return n

    async def drain(self) -> None:
        """Wait for pipelined writes still in flight and account for them (errors as events);
        the heartbeat between steps stops (the run is over: the devices' watchdogs take it)."""
        self._cancel_idle_beat()
        await self._settle_idle_beat()
        await self.drain_heartbeats()
        t = self.last_report.t if self.last_report is not None else math.nan
        while self._in_flight:
            li, task = next(iter(self._in_flight.items()))
            await asyncio.wait([task])
            del self._in_flight[li]
            lo = next(lo for lo in self._link_outs if lo.link == li)
            self._write_result(lo, _task_outcome(task), t)

    async def _write_link(
        self,
        lo: _LinkOutputs,
        values: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> int:
        """One link's outputs: the prepared batch (vectorised deadband) or a dict of values."""
        link = self.links[lo.link]
        values = lo.values if values is None else values
        valid = lo.valid if valid is None else valid
        if lo.batch is not None:
            return int(await link.write_batch(lo.batch, values, valid))
        vals = {n: v for n, v, k in zip(lo.names, values.tolist(), valid) if k}
        await link.write_outputs(vals)
        return len(vals)

    def _record(
        self,
        t: float,
        samples: Mapping[str, Sample],
        outputs: Mapping[str, float],
        new_alarms: Sequence[Alarm],
    ) -> None:
        rec = self.recorder
        if self.record_values:
            nan = math.nan
            good = Quality.GOOD
            values: dict[str, float] = {}
            b = self._bulk
            if b is not None and isinstance(samples, _SampleView):
                iq = samples.q[b.in_pos]
                vals = np.where(iq == GOOD, samples.v[b.in_pos], nan)
                values.update(zip(self._in_columns, vals.tolist()))
            else:
                for col, p in zip(self._in_columns, self.inputs):
                    s = samples.get(p.name)
                    values[col] = s.value if s is not None and s.quality is good else nan
            # outputs: the arrays of this step's groups (what ``outputs`` holds, by column)
            for g in self._out_groups if outputs else ():
                if g.values is None or g.ok is None or not g.enabled:
                    continue
                if g.ok.all():
                    values.update(zip(g.columns, g.values.tolist()))
                else:
                    values.update(
                        (c, v) for c, v, k in zip(g.columns, g.values.tolist(), g.ok) if k
                    )
            rec.record(t, values)
            every = getattr(rec, "flush_every", 0)
            self._rows_since_flush += 1
            if every and self._rows_since_flush >= every:
                self._rows_since_flush = 0  # the recorder wrote its row group inside record()
        for a in new_alarms:
            if a.kind == "divergence":
                rec.alarm(t, a.point, a.field_value, a.twin_value, a.tolerance, a.message)
            elif a.kind == "not_converged":
                rec.alarm(t, "", math.nan, math.nan, math.nan, a.message)

    # --- watchdogs both ways (issue 11) ----------------------------------------------------------
    def _init_watchdogs(self) -> None:
        """Heartbeat points and the link epochs that tell a return after a loss."""
        beats = []
        if self.mode == "hil":
            for p in self.pointmap.points:
                li = self._route(p) if is_heartbeat(p) else None
                if li is not None:
                    beats.append((p.name, li))
        self._heartbeats: list[tuple[str, int]] = beats
        #: the heartbeat counter written last (uint16, wraps) and how many writes went out
        self.heartbeat = 0
        self.heartbeats_sent = 0
        self._beat_tasks: dict[int, asyncio.Task[int]] = {}
        self._in_step = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._link_epochs = [_epoch(lk) for lk in self.links]
        #: the reconcile reports: (t, link name, {point: (twin's last, field's)}), newest last
        self.reconciled: deque[tuple[float, str, dict[str, tuple[float, float]]]] = deque(
            maxlen=100
        )

    async def _heartbeat_outputs(self, t: float) -> None:
        """Write the heartbeat counter (every step, whatever the load flow did): the devices'
        watchdogs go to their safe states when it stops (``hil.emulator.devices``)."""
        if not self._heartbeats:
            return
        self.heartbeat = (self.heartbeat + 1) % 65536
        for name, li in self._heartbeats:
            link = self.links[li]
            if not link.connected or self._link_epochs[li] != _epoch(link):
                continue  # down, or back but not reconciled yet: nothing is written
            if self.write_mode == "pipelined":
                # as the outputs: sent now, the answer collected later (one beat in flight)
                task = self._beat_tasks.get(li)
                if task is not None and not task.done():
                    continue
                if task is not None:
                    self._beat_result(t, name, link, _task_outcome(task))
                self._beat_tasks[li] = asyncio.get_running_loop().create_task(
                    self._write_beat(link, name), name=f"sync heartbeat {link.name}"
                )
                continue
            try:
                self._beat_result(t, name, link, await self._write_beat(link, name))
            except (HilError, OSError, TimeoutError) as exc:
                self._beat_result(t, name, link, exc)

    # the heartbeat between steps: a timer armed at the end of each step (a TimerHandle, not a
    # task: nothing is left pending when a loop is closed without drain); when it fires before
    # the next step, one heartbeat goes out as in a step and the timer is armed again
    def _arm_idle_beat(self) -> None:
        self._cancel_idle_beat()
        if self.heartbeat_s is None or not self._heartbeats or self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self.heartbeat_s, self._idle_beat_due)

    def _cancel_idle_beat(self) -> None:
        timer = self._idle_timer
        if timer is not None:
            timer.cancel()
            self._idle_timer = None

    def _idle_beat_due(self) -> None:
        self._idle_timer = None
        if self._in_step or self._stopping:
            return
        self._idle_task = asyncio.get_running_loop().create_task(
            self._idle_beat(), name="sync heartbeat between steps"
        )

    async def _idle_beat(self) -> None:
        t = self.last_report.t if self.last_report is not None else 0.0
        try:
            await self._heartbeat_outputs(t)
            self._counters["idle_heartbeats"] += 1
        except Exception:  # never lost silently, never stops the loop
            _log.exception("heartbeat between steps failed")
        if not self._in_step:
            self._arm_idle_beat()

    async def _settle_idle_beat(self) -> None:
        """A step (or drain) waits for a heartbeat between steps still on the wire: one request
        at a time per link."""
        self._cancel_idle_beat()
        task = self._idle_task
        if task is not None:
            self._idle_task = None
            if not task.done():
                await asyncio.wait([task])

    async def _write_beat(self, link: Any, name: str) -> int:
        await link.write_point(name, float(self.heartbeat))
        return 1

    def _beat_result(self, t: float, name: str, link: Any, r: int | BaseException) -> None:
        if isinstance(r, BaseException):
            if not isinstance(r, (HilError, OSError, TimeoutError)):
                raise r
            self._counters["write_errors"] += 1
            self._event(t, "write_error", f"heartbeat {name}: {r}", link=link.name)
        else:
            self.heartbeats_sent += r

    async def drain_heartbeats(self) -> None:
        """Wait for heartbeat writes still in flight (pipelined mode) and account for them."""
        t = self.last_report.t if self.last_report is not None else math.nan
        tasks, self._beat_tasks = self._beat_tasks, {}
        for li, task in tasks.items():
            await asyncio.wait([task])
            name = next(n for n, i in self._heartbeats if i == li)
            self._beat_result(t, name, self.links[li], _task_outcome(task))

    async def _reconcile_returned_links(self, t: float) -> None:
        """A link back after a loss: read the field's commands and setpoints before anything is
        written on it, and take them as they are (no silent return to the twin's old ones); an
        event names every point where the field differs from what the twin last wrote."""
        for li, link in enumerate(self.links):
            epoch = _epoch(link)
            if epoch == self._link_epochs[li] or not link.connected:
                continue
            last = link.last_written()
            names = [n for n in last if link.point(n).kind in ("command", "setpoint")]
            names = [n for n in names if not is_heartbeat(link.point(n))]
            try:
                field = await link.read_back(names) if names else {}
            except NotImplementedError:
                field = {}
            except (HilError, OSError, TimeoutError) as exc:
                self._event(t, "reconcile_failed", f"{link.name}: {exc}", link=link.name)
                continue  # tried again next step; nothing is written meanwhile
            self._link_epochs[li] = epoch
            differ: dict[str, tuple[float, float]] = {}
            adopted: dict[str, float] = {}
            for n in names:
                s = field.get(n)
                if s is None or not s.quality.is_good:
                    continue
                adopted[n] = s.value
                tol = max(link.point(n).deadband, 1e-9 * max(1.0, abs(last[n])))
                if abs(s.value - last[n]) > tol:
                    differ[n] = (last[n], s.value)
            link.adopt_field_values(adopted)
            self.reconciled.append((t, link.name, differ))
            if differ:
                what = ", ".join(
                    f"{n} field {f:g} (twin wrote {w:g})" for n, (w, f) in differ.items()
                )
                msg = f"{link.name} back: field differs, kept the field's: {what}"
                _log.warning("t=%.3f %s", t, msg)
            else:
                msg = f"{link.name} back: {len(names)} commands/setpoints read, as the twin wrote"
            self._event(t, "reconcile", msg, link=link.name, differ=len(differ))

    def _column(self, p: Point) -> str:
        return f"{p.table}.{p.column}[{self._labels[p.name]}]"

    def _event(self, t: float, kind: str, message: str, **fields: Any) -> None:
        _log.info("t=%.3f %s: %s", t, kind, message)
        if self.recorder is not None:
            self.recorder.event(t, kind, message, **fields)

    def _idle_flush(self, slack_s: float) -> bool:
        """Let the recorder write its row group now, between steps, when there is time.

        A recorder writes a row group from inside ``record()`` every ``flush_every`` rows
        (tens of ms with a thousand columns): that step would miss its deadline. Flushing in the
        idle time before the next tick, one row early, keeps that work out of the steps. The
        work is the same either way; done here it starts earlier, so even a flush longer than
        the idle time delays the next step less than one inside it would. Returns whether it
        flushed.
        """
        rec = self.recorder
        every = getattr(rec, "flush_every", 0)
        if not every or not self.record_values or not hasattr(rec, "flush"):
            return False
        if self._rows_since_flush < max(1, every - 1):
            return False
        if slack_s < 0.25 * self.period_s:
            return False  # a late step: leave the row group to record()
        rec.flush()
        self._rows_since_flush = 0
        self._counters["idle_flushes"] += 1
        return True

    # --- running at a fixed period --------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step (no more heartbeats between steps)."""
        self._stopping = True
        self._cancel_idle_beat()

    async def run(
        self, steps: int | None = None, duration_s: float | None = None, *, t0: float = 0.0
    ) -> int:
        """Step at a fixed period against absolute deadlines; returns the steps run.

        Tick ``k`` is due at ``start + k * period_s`` and steps with ``t = t0 + k * period_s``.
        A step that ends after the next tick is due is a deadline miss, handled by
        ``deadline_policy``. Stops after ``steps`` steps, after ``duration_s`` (ticks, run or
        skipped), or on :meth:`stop`; with neither, runs until stopped.
        """
        self._stopping = False
        p = self.period_s
        max_ticks = None if duration_s is None else max(1, math.ceil(duration_s / p - 1e-9))
        start = self.clock()
        k = 0
        done = 0
        backlog = False  # catching up: steps start late because an earlier one overran
        while not self._stopping:
            if steps is not None and done >= steps:
                break
            if max_ticks is not None and k >= max_ticks:
                break
            due = start + k * p
            now = self.clock()
            if now < due and self._idle_flush(due - now):
                now = self.clock()
            if now < due:
                await self.sleep(due - now)
            began = self.clock()
            await self.step(t0 + k * p)
            if backlog:
                self._counters["caught_up_ticks"] += 1
            done += 1
            k += 1
            now = self.clock()
            late_ticks = math.floor((now - start) / p) - k + 1  # ticks already due
            if late_ticks <= 0:
                backlog = False
                continue
            if backlog and now - began <= p:
                # a caught-up step that itself fitted in its period: not a new miss
                excess = max(0, late_ticks - self.max_catch_up)
                self._counters["skipped_ticks"] += excess
                k += excess
                continue
            self._counters["misses"] += 1
            overrun = now - (start + (k - 1) * p)
            if self.deadline_policy == "stop":
                msg = (
                    f"step at t={t0 + (k - 1) * p:.3f} s took {overrun * 1e3:.1f} ms, expected at "
                    f"most the period {p * 1e3:.1f} ms"
                )
                self._event(t0 + (k - 1) * p, "deadline_missed", msg)
                raise DeadlineMissed(msg)
            if self.deadline_policy == "skip":
                self._counters["skipped_ticks"] += late_ticks
                k += late_ticks
            else:  # catch_up: the due ticks run back to back, the excess is skipped
                excess = max(0, late_ticks - self.max_catch_up)
                self._counters["skipped_ticks"] += excess
                k += excess
                backlog = True
        await self.drain()
        return done

    # --- statistics -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters plus per-phase and whole-step duration summaries (p50/p99/max in ms)."""
        out: dict[str, Any] = dict(self._counters)
        out["phases"] = {ph: self._hist[ph].summary() for ph in PHASES}
        out["step"] = self._hist["step"].summary()
        out["write_ack"] = self._hist["write_ack"].summary()
        out["active_alarms"] = len(self.active_alarms)
        return out

    def counters(self) -> dict[str, int]:
        """The counters of :meth:`stats` alone (cheap: no percentiles)."""
        return dict(self._counters)

    def reset_stats(self) -> None:
        """Forget counters and durations (e.g. after warm-up steps); alarms are kept."""
        size = len(self._hist["step"]._buf)
        self._hist = {ph: _Ring(size) for ph in (*PHASES, "step", "write_ack")}
        self._counters = dict.fromkeys(self._counters, 0)

    def phase_durations(self, phase: str) -> np.ndarray:
        """The kept durations (s) of one phase (or ``"step"``, ``"write_ack"``), oldest first
        when not wrapped."""
        return self._hist[phase].values().copy()


def _model_values(net: Any, g: _Group) -> np.ndarray:
    """The net's own (model-side) values of a group's inputs, NaN where it has none."""
    try:
        col = net[g.table][g.column].reindex(g.index)
        return np.asarray(col.to_numpy(dtype=float), dtype=float).copy()
    except (KeyError, AttributeError, TypeError, ValueError):
        return np.full(len(g.names), np.nan)


def _changed_text(changed: Sequence[tuple[str, float, float, float]], since: float | None) -> str:
    """``"; inputs changed since the last converged step (t=...): A 0.02 -> 1e+30, ..."``"""
    when = "the start" if since is None else f"the last converged step (t={since:.6g} s)"
    if not changed:
        return f"; no input changed since {when}"
    shown = ", ".join(f"{n} {o:.6g} -> {v:.6g}" for n, o, v, _ in changed[:10])
    more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
    return f"; inputs changed since {when}: {shown}{more}"


def _task_outcome(task: asyncio.Task[int]) -> int | BaseException:
    """A finished task's result, or the exception it ended with."""
    if task.cancelled():
        return 0  # only drain()/close cancel: nothing to report
    exc = task.exception()
    return exc if exc is not None else task.result()


def _epoch(link: Any) -> int:
    """How many times a link came back (its ``reconnects`` counter)."""
    stats = getattr(link, "stats", None)
    return int(stats.get("reconnects", 0)) if isinstance(stats, dict) else 0


def _needs_poll(link: Any) -> bool:
    """Whether the loop must call ``poll()`` each step.

    Not for a link without inputs, a subscription link (the server pushes) or a link with its
    own poll task (``poll_interval_s`` set); a link may also say so itself (``polled``).
    """
    if not getattr(link, "inputs", True):
        return False
    flag = getattr(link, "polled", None)
    if flag is not None:
        return bool(flag)
    if getattr(link, "mode", None) == "subscription":
        return False
    return hasattr(link, "poll_interval_s") and link.poll_interval_s is None


def _label(p: Point) -> str:
    suffix = "." + p.column
    if p.name.endswith(suffix) and len(p.name) > len(suffix):
        return p.name[: -len(suffix)]
    return str(p.element)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(allowed)}, found {value!r}")
