"""The scenario engine: SimPy owns simulated time, the field (asyncio) is reached via the bridge.

One run::

    parse (scenarios.config) -> grid + checks against it (scenarios.validate)
    model (twin.GridModel)
    field (none / emulated substation + SyncLoop / real hardware)       scenarios.field, .hilfield
    SimPy processes: the stepper, one per timed event, user processes    here
    bridge.run(): steps SimPy, awaits field I/O in between               scenarios.bridge
    results: timeseries.parquet, events.csv, alarms.csv, summary.json, junit.xml

Within one simulated instant, events scheduled for it run before the step that solves it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from hil.field import EmulatedField, Field, HardwareField, LocalField, SimClock
from scenarios.bridge import Bridge, run_blocking
from scenarios.checks import Check, CheckResult, StepState, build_check
from scenarios.config import EventSpec, Scenario, load_scenario
from scenarios.events import HANDLERS
from scenarios.profiles import Profile, element_labels, resolve_profile
from scenarios.timeparse import format_clock
from scenarios.validate import (
    assert_against_grid,
    field_pointmap,
    load_grid,
    load_hardware_of,
)
from twin.errors import ConfigError, TwinError
from twin.labels import unknown_label
from twin.recorder import Recorder, column_name

_log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]
#: Called after every step with a small dict (see ``_Stepper.snapshot``) for live views.
OnStep = Callable[[dict[str, Any]], None]


def make_model(net: Any, backend: str = "auto") -> Any:
    """The twin's model of ``net``: ``twin.GridModel`` (compiled Newton kernel)."""
    from twin.model import GridModel

    return GridModel(net, backend=backend)


def backend_info(model: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"model": type(model).__module__ + "." + type(model).__name__}
    b = getattr(model, "backend", None)
    if b is not None:
        info["backend"] = str(b)
    from twin.loadflow import build_info

    info.update({k: v for k, v in build_info().items() if isinstance(v, str | bool | int)})
    return info


@dataclass
class RunResult:
    """What a run produced; ``passed`` is True when every check passed."""

    scenario: Scenario
    out_dir: Path | None
    checks: list[CheckResult]
    steps: int
    wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    recorder: Recorder | None = None
    error: str = ""
    #: result files that could not be written (path: reason), e.g. on a full disk
    unwritten: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.error and all(c.passed for c in self.checks)


class TwinRuntime:
    """The running twin as events and user processes see it (``fn(env, twin)``).

    Attributes:
        env: the SimPy environment (``env.now`` = seconds from the scenario start).
        model, net: the twin's model and its pandapower net.
        field: the field side (``has_hardware`` tells whether there is one).
        solution: the last converged solution (None before the first step).
        scenario, recorder.
    """

    def __init__(
        self,
        scenario: Scenario,
        env: simpy.Environment,
        model: Any,
        field: Field,
        recorder: Recorder,
        profiles: list[Profile],
    ) -> None:
        self.scenario = scenario
        self.env = env
        self.model = model
        self.net = model.net
        self.field = field
        self.recorder = recorder
        self.profiles = profiles
        self.solution: Any = None
        self.power_factor: dict[tuple[str, int], float] = {}
        self.power_offset: dict[tuple[str, int], float] = {}
        self._unprofiled_p: dict[tuple[str, int], float] = {}
        self._unprofiled_q: dict[tuple[str, int], float] = {}
        #: (table, index) of elements held at zero P and Q (a DER trip without field hardware)
        self.tripped: set[tuple[str, int]] = set()
        self._was_tripped: set[tuple[str, int]] = set()
        self._vec_plan: Any = None  # _profile_vectors: which profiles feed which columns
        self._full_pos: dict[tuple[int, str, str], tuple[Any, Any, np.ndarray | None]] = {}
        self._labels = {
            t: element_labels(self.net, t)
            for t in ("bus", "line", "trafo", "switch", "load", "sgen")
            if t in self.net
        }
        self._point_of: dict[tuple[str, int, str], str] = {}
        pm = field.pointmap
        if pm is not None:
            from twin.pointmap import resolve_element

            for p in pm.points:
                try:
                    self._point_of[(p.table, int(resolve_element(self.net, p)), p.column)] = p.name
                except Exception:  # a point without a model element (device-only table)
                    continue

    # --- lookups --------------------------------------------------------------------------------
    @property
    def t(self) -> float:
        return float(self.env.now)

    @property
    def plant(self) -> Any:
        """The model the physical world acts on: the twin in hil mode, the plant in mirror."""
        pm = self.field.plant_model
        return pm if pm is not None else self.model

    def index(self, table: str, label: str) -> int:
        try:
            return self._labels[table][label]
        except KeyError:
            raise ConfigError(
                str(self.scenario.path), "element", unknown_label(self.net, table, label)
            ) from None

    def point(self, table: str, idx: int, column: str) -> str | None:
        return self._point_of.get((table, int(idx), column))

    def value(self, table: str, column: str, label: str) -> float:
        """A quantity of the running twin: the last solution's result, else the model input."""
        i = self.index(table, label)
        if self.solution is not None:
            try:
                arr = self.solution.get(table, column)
                return float(arr[self.net[table].index.get_loc(i)])
            except (KeyError, AttributeError, TwinError):
                pass
        return float(self.net[table].at[i, column])

    def sync_clock(self) -> None:
        """Bring the field's simulated clock to ``env.now`` (actions between steps)."""
        clock = self.field.clock
        if clock is not None and clock.t < self.env.now:
            clock.t = float(self.env.now)

    def log(self, kind: str, message: str, **fields: Any) -> None:
        _log.info("t=%s %s: %s", format_clock(self.t, self.scenario.start_sod), kind, message)
        self.recorder.event(self.t, kind, message, **fields)

    # --- actions --------------------------------------------------------------------------------
    def command_switch(self, label: str, closed: bool, *, why: str = "") -> None:
        i = self.index("switch", label)
        cmd = self.point("switch", i, "cmd") if self.field.has_hardware else None
        if cmd is not None:
            self.field.command(cmd, 1.0 if closed else 0.0)
        else:
            self.plant.update("switch", "closed", [bool(closed)], index=[i])
        self.log(
            "switch_close" if closed else "switch_open",
            f"{why}: {'close' if closed else 'open'} {label}",
            element=label,
        )

    def set_in_service(self, table: str, label: str, flag: bool, *, why: str = "") -> None:
        self.set_in_service_idx(table, [self.index(table, label)], flag, why=why, label=label)

    def set_in_service_idx(
        self, table: str, idx: list[int], flag: bool, *, why: str = "", label: str | None = None
    ) -> None:
        if not idx:
            return
        if table == "sgen" and self.field.has_hardware:
            for i in idx:
                lab = (self.point("sgen", i, "p_mw") or f"sgen{i}").rsplit(".", 1)[0]
                self.field.der_trip(lab, not flag)
        elif table == "sgen":
            # The model has no sgen.in_service input: a tripped inverter feeds nothing in.
            for i in idx:
                if flag:
                    self.tripped.discard(("sgen", int(i)))
                else:
                    self._base_p(self.plant, "sgen", int(i))  # remember P and Q before the trip
                    self.tripped.add(("sgen", int(i)))
            self.apply_profiles()
        else:
            self.plant.update(table, "in_service", [bool(flag)] * len(idx), index=list(idx))
        what = label or f"{len(idx)} {table}(s)"
        self.log(
            f"{table}_{'return' if flag else 'outage'}",
            f"{why}: {what} {'back in service' if flag else 'out of service'}",
            table=table,
            elements=len(idx),
        )

    def set_tap(self, label: str, pos: int, *, why: str = "") -> None:
        i = self.index("trafo", label)
        cur = int(round(float(self.plant.net.trafo.at[i, "tap_pos"])))
        if self.field.has_hardware and (
            self.point("trafo", i, "tap_pos") or self.point("trafo", i, "tap_raise")
        ):
            ok = self.field.tap_operate(label, pos - cur) if pos != cur else True
            if not ok:
                self.log(
                    "tap_change",
                    f"{why}: tap change on {label} refused by the device",
                    element=label,
                )
                return
        else:
            self.plant.update("trafo", "tap_pos", [int(pos)], index=[i])
        self.log("tap_change", f"{why}: {label} tap {cur} -> {pos}", element=label)

    def start_fault(
        self,
        label: str,
        current_ka: float,
        *,
        pickup_ka: float | None = None,
        delay_s: float | None = None,
        why: str = "",
    ) -> None:
        i = self.index("line", label)
        self.log("fault", f"{why}: fault on line {label}, {current_ka:g} kA", element=label)
        if self.field.has_hardware and self.point("line", i, "i_ka"):
            self.field.start_fault(label, current_ka, self.t)
            return
        # No relay in the field: emulate a definite-time relay on the line's breaker here.
        row = self.net.line.loc[i]
        pickup = pickup_ka if pickup_ka is not None else 1.2 * float(row["max_i_ka"])
        delay = 0.5 if delay_s is None else float(delay_s)
        if current_ka <= pickup:
            self.log(
                "fault",
                f"{label}: {current_ka:g} kA below relay pickup {pickup:g} kA, not cleared",
                element=label,
            )
            return
        sw = self.net.switch[(self.net.switch.et == "l") & (self.net.switch.element == i)]

        def relay() -> Any:
            yield self.env.timeout(delay)
            if len(sw):
                self.plant.update("switch", "closed", [False], index=[int(sw.index[0])])
                brk = str(self.net.switch.at[sw.index[0], "name"])
            else:
                self.plant.update("line", "in_service", [False], index=[i])
                brk = "(line taken out of service)"
            self.log(
                "fault_cleared",
                f"fault on {label} cleared by relay after {delay:g} s: breaker {brk} opened",
                line=label,
                breaker=brk,
            )

        self.env.process(relay())

    def clear_fault(self, label: str, *, why: str = "") -> None:
        if self.field.has_hardware:
            self.field.clear_fault(label)
        self.log("fault_end", f"{why}: fault on {label} gone", element=label)

    def _base_p(self, target: Any, table: str, i: int) -> float:
        """P of an element no profile drives, as it was before any step touched it."""
        key = (table, i)
        if key not in self._unprofiled_p:
            self._unprofiled_p[key] = float(target.net[table].at[i, "p_mw"])
            self._unprofiled_q[key] = float(target.net[table].at[i, "q_mvar"])
        return self._unprofiled_p[key]

    def apply_profiles(self) -> None:
        """Set every profiled element to its profile value at ``env.now`` (plus any steps)."""
        t = self.t
        target = self.plant
        hw = self.field.has_hardware
        vecs = self._profile_vectors(t)
        if self.power_factor or self.power_offset or self.tripped or self._was_tripped:
            self._apply_modified(target, hw, vecs)
            return
        for (table, col), (idx, vals) in vecs.items():
            if table == "sgen" and col == "p_mw" and hw:
                self._offer_available(idx, vals)
                continue
            self._update(target, table, col, idx, vals)

    def _profile_vectors(self, t: float) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """(table, column) -> (element indices, values) of every profile at ``t``; where
        profiles overlap, the later one's value (as the file orders them)."""
        got = [p.targets(t) if p.index.size else None for p in self.profiles]
        shape = tuple(None if g is None else g[1] is not None for g in got)
        plan = self._vec_plan
        if plan is None or plan[0] != shape:
            groups: dict[tuple[str, str], list[tuple[int, int]]] = {}
            for i, prof in enumerate(self.profiles):
                if got[i] is None:
                    continue
                groups.setdefault((prof.spec.table, prof.spec.column), []).append((i, 0))
                if shape[i]:
                    groups.setdefault((prof.spec.table, "q_mvar"), []).append((i, 1))
            built = []
            for key, parts in groups.items():
                idx = np.concatenate([self.profiles[i].index for i, _ in parts]).astype(np.int64)
                # the last occurrence of an element wins (a later profile overrides)
                _, last = np.unique(idx[::-1], return_index=True)
                keep = None if last.size == idx.size else np.sort(idx.size - 1 - last)
                built.append((key, parts, idx if keep is None else idx[keep], keep))
            plan = self._vec_plan = (shape, built)
        out: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for key, parts, idx, keep in plan[1]:
            vals = np.concatenate([np.asarray(got[i][k], dtype=float) for i, k in parts])
            out[key] = (idx, vals if keep is None else vals[keep])
        return out

    def _update(self, target: Any, table: str, col: str, idx: np.ndarray, vals: Any) -> None:
        """``target.update`` of these elements; a vector in table order when they are the
        whole table (the model's fast path for a full load / sgen column)."""
        df = target.net[table]
        key = (id(target), table, col)
        hit = self._full_pos.get(key)
        if hit is None or hit[0] is not df.index or hit[1] is not idx:
            pos = None
            if idx.size == len(df) and df.index.is_unique:
                p = df.index.get_indexer(idx)
                if (p >= 0).all() and np.unique(p).size == p.size:
                    pos = p
            hit = self._full_pos[key] = (df.index, idx, pos)
        pos = hit[2]
        if pos is None:
            target.update(table, col, vals, index=idx.tolist())
            return
        full = np.empty(len(df))
        full[pos] = vals
        target.update(table, col, full)

    def _offer_available(self, idx: Any, vals: Any) -> None:
        # The inverters decide what they feed in: the twin tells them what the sun gives.
        for i, v in zip(np.asarray(idx).tolist(), np.asarray(vals, dtype=float).tolist()):
            name = self.point("sgen", i, "p_avail_mw")
            if name is not None:
                self.field.offer_output(name, max(v, 0.0))

    def _apply_modified(
        self,
        target: Any,
        hw: bool,
        vecs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """The profile values with the run's steps on top (factors, offsets, trips)."""
        by_table: dict[tuple[str, str], dict[int, float]] = {
            key: dict(zip(idx.tolist(), vals.tolist())) for key, (idx, vals) in vecs.items()
        }
        # Steps stack on the profile value (or the element's own value when not profiled).
        for (table, i), f in self.power_factor.items():
            d = by_table.setdefault((table, "p_mw"), {})
            d[i] = d.get(i, self._base_p(target, table, i)) * f
        for (table, i), off in self.power_offset.items():
            d = by_table.setdefault((table, "p_mw"), {})
            d[i] = d.get(i, self._base_p(target, table, i)) + off
        for table, i in self.tripped:
            by_table.setdefault((table, "p_mw"), {})[i] = 0.0
            by_table.setdefault((table, "q_mvar"), {})[i] = 0.0
        for table, i in self._was_tripped - self.tripped:
            # back in service: to the profile value, else to what it was before the trip
            d = by_table.setdefault((table, "p_mw"), {})
            d.setdefault(i, self._base_p(target, table, i))
            dq = by_table.setdefault((table, "q_mvar"), {})
            dq.setdefault(i, self._unprofiled_q.get((table, i), 0.0))
        self._was_tripped = set(self.tripped)
        for (table, col), d in by_table.items():
            if not d:
                continue
            idx = list(d)
            vals = np.asarray([d[i] for i in idx], dtype=float)
            if table == "sgen" and col == "p_mw" and hw:
                self._offer_available(idx, vals)
                continue
            target.update(table, col, vals, index=idx)


def _is_result(net: Any, table: str, column: str) -> bool:
    """Whether a quantity is a load-flow result (a column of ``net.res_<table>``); anything else
    (switch.closed, trafo.tap_pos) is a model input."""
    res = "res_" + table
    return res in net and column in net[res].columns


class _Stepper:
    """The SimPy side of a run: the step process, timed and triggered events, checks, records."""

    def __init__(
        self,
        sc: Scenario,
        rt: TwinRuntime,
        bridge: Bridge,
        checks: list[Check],
        progress: Progress | None,
        on_step: OnStep | None = None,
    ) -> None:
        self.sc = sc
        self.rt = rt
        self.bridge = bridge
        self.checks = checks
        self.progress = progress
        self.on_step = on_step
        self.steps_done = 0
        self.not_converged = 0
        self.deadline_misses = 0
        self.stale_steps = 0
        self.alarm_count = 0
        self.solve_s: list[float] = []
        self.late_s: list[float] = []  # realtime: how far past the next step's due time
        self.failure: Exception | None = None
        self._fired: set[int] = set()
        self._held: dict[int, bool] = {}
        self._record_cols = self._plan_record()
        self._names_key: tuple[tuple[int, ...], tuple[str, ...]] | None = None
        self._names: tuple[str, ...] = ()
        #: a setpoint's record column name by point name (made once, not per step)
        self._setpoint_cols: dict[str, str] = {}
        #: this step's solution results by (table, column) (see _result)
        self._memo: dict[tuple[str, str], np.ndarray | Exception] = {}

    # --- recording plan -------------------------------------------------------------------------
    def _plan_record(
        self,
    ) -> list[tuple[str, str, list[str], np.ndarray | None, bool, tuple[str, ...]]]:
        """Per recorded quantity: table, column, labels, their positions (None: all), whether
        it is a load-flow result, and its record column names (made once, not per step)."""
        net = self.rt.net
        plan: list[tuple[str, str, list[str], np.ndarray | None, bool, tuple[str, ...]]] = []
        for q in self.sc.record.quantities:
            table, _, rest = q.partition(".")
            column, _, label = rest.partition("[")
            if table not in net or len(net[table]) == 0:
                continue
            labels = list(element_labels(net, table))
            if label:
                label = label.rstrip("]")
                if label not in labels:
                    continue
                pos = np.asarray([labels.index(label)])
                labels = [label]
            else:
                pos = None
            names = tuple(column_name(table, column, lab) for lab in labels)
            plan.append((table, column, labels, pos, _is_result(net, table, column), names))
        return plan

    def _result(self, sol: Any, table: str, column: str) -> np.ndarray | Exception:
        """``sol.get(table, column)`` as floats, or its error; once per step (the checks and
        the record row ask for the same results)."""
        key = (table, column)
        got = self._memo.get(key)
        if got is None:
            try:
                got = np.asarray(sol.get(table, column), dtype=float)
            except (KeyError, AttributeError, TwinError, ValueError) as exc:
                got = exc
            self._memo[key] = got
        return got

    def _values(self, sol: Any) -> tuple[tuple[str, ...], np.ndarray]:
        """This step's record row: column names (the same tuple object while they do not
        change, so the recorder looks them up once) and their values."""
        net = self.rt.net
        parts: list[np.ndarray] = []
        used: list[int] = []
        for i, (table, column, labels, pos, is_result, _names) in enumerate(self._record_cols):
            arr = None
            if sol is not None and is_result:
                got = self._result(sol, table, column)
                arr = None if isinstance(got, Exception) else got
            if arr is None and column in net[table].columns:
                arr = net[table][column].to_numpy(dtype=float)
            if arr is None:
                if sol is None:
                    arr = np.full(len(net[table]), np.nan)
                else:
                    continue
            if pos is not None:
                arr = arr[pos]
            if arr.shape != (len(labels),):  # a result of another shape: as many as fit
                fit = np.full(len(labels), np.nan)
                flat = arr.ravel()[: len(labels)]
                fit[: flat.size] = flat
                arr = fit
            parts.append(arr)
            used.append(i)
        f = self.rt.field
        extra: dict[str, float] = {}
        if self.sc.record.setpoints:
            cols = self._setpoint_cols
            for name, v in f.setpoint_values().items():
                col = cols.get(name)
                if col is None:
                    p = f.pointmap[name]
                    col = cols[name] = column_name(p.table, p.column, name[: -len(p.column) - 1])
                extra[col] = v
        extra["alarms.active"] = float(f.active_alarms())
        extra.update(f.link_quality())
        key = (tuple(used), tuple(extra))
        if key != self._names_key:
            self._names_key = key
            self._names = tuple(n for i in used for n in self._record_cols[i][5]) + tuple(extra)
        parts.append(np.fromiter(extra.values(), dtype=float, count=len(extra)))
        return self._names, np.concatenate(parts)

    # --- processes ------------------------------------------------------------------------------
    def step_process(self) -> Any:
        """The stepper; a failure of the field step (a lost link with ``stale_policy =
        "refuse"``, a device error) ends the run cleanly with that error, never a traceback."""
        try:
            yield from self._steps()
        except Exception as exc:  # handed to run_scenario as the run's error
            self.failure = exc
            self.bridge.stop()

    def _steps(self) -> Any:
        env, sc, rt = self.env, self.sc, self.rt
        n = sc.steps
        for k in range(n + 1):
            t = k * sc.step
            if env.now < t:
                yield env.timeout(t - env.now)
            yield env.timeout(0)  # let events due at this instant run first
            rt.apply_profiles()
            t0 = time.perf_counter()
            outcome = yield self.bridge.io(rt.field.step(t))
            self.solve_s.append(time.perf_counter() - t0)
            miss = False
            if self.bridge.pace == "realtime" and k < n:
                late = self.bridge.clock() - self.bridge.wall_target(t + sc.step)
                self.late_s.append(max(0.0, late))
                miss = late > 0
                if miss:
                    self.deadline_misses += 1
                    rt.log(
                        "deadline_missed",
                        f"step at t={t:g} s ended after the next step was due",
                        lag_s=self.bridge.clock() - self.bridge.wall_target(t + sc.step),
                    )
            with _signals_held():  # a step's row and its count go together, or neither
                self._after_step(t, outcome, miss)
                self.steps_done += 1
            if self.progress is not None:
                self.progress(k + 1, n + 1, t)
            if self.on_step is not None:
                self.on_step(self.snapshot(k + 1, n + 1, t))

    def _after_step(self, t: float, outcome: Any, miss: bool) -> None:
        rt = self.rt
        sol = outcome.solution if outcome.converged else None
        if sol is not None:
            rt.solution = sol
        else:
            self.not_converged += 1
        if outcome.stale:
            self.stale_steps += 1
        self.alarm_count += len(outcome.alarms)  # the field's sync loop has recorded them

        self._memo = {}

        def arr(table: str, column: str) -> np.ndarray | None:
            if sol is None or table not in rt.net or len(rt.net[table]) == 0:
                return None
            got = self._result(sol, table, column)
            if isinstance(got, ValueError):
                raise got
            return None if isinstance(got, Exception) else got

        st = StepState(
            t=t,
            converged=sol is not None,
            vm_pu=arr("bus", "vm_pu"),
            line_loading=arr("line", "loading_percent"),
            trafo_loading=arr("trafo", "loading_percent"),
            switch_closed=rt.net.switch["closed"].to_numpy(dtype=bool)
            if "switch" in rt.net
            else None,
            stale=tuple(outcome.stale),
            alarms=tuple(outcome.alarms),
            deadline_miss=miss,
            field=rt.field,
        )
        for c in self.checks:
            c.observe(st)
        self._last = st
        k = self.steps_done
        if k % self.sc.record.every == 0:
            rt.recorder.record_array(t, *self._values(sol))
        self._conditions(t)

    def _conditions(self, t: float) -> None:
        for ev in self.sc.events:
            if ev.when is None or (ev.index in self._fired and not ev.repeat):
                continue
            c = ev.when
            try:
                v = self.rt.value(c.table, c.column, c.element)
            except (KeyError, IndexError, TwinError):
                continue
            holds = math.isfinite(v) and c.holds(v)
            was = self._held.get(ev.index, False)
            self._held[ev.index] = holds
            if holds and not was:
                self._fired.add(ev.index)
                self.rt.log("trigger", f"{ev.title}: {c.text} ({v:.4g})", condition=c.text)
                self.env.process(self._run_event(ev, ev.delay))

    def timed_event(self, ev: EventSpec) -> Any:
        assert ev.at is not None
        yield self.env.timeout(ev.at + ev.delay)
        yield from self._apply(ev)

    def _run_event(self, ev: EventSpec, delay: float) -> Any:
        if delay > 0:
            yield self.env.timeout(delay)
        yield from self._apply(ev)

    def _apply(self, ev: EventSpec) -> Any:
        self.rt.sync_clock()
        undo = self._guarded(ev, "not applied", lambda: HANDLERS[ev.kind](self.rt, ev))
        if ev.duration is not None and undo is not None:
            yield self.env.timeout(ev.duration)
            self.rt.sync_clock()
            self._guarded(ev, "not undone at its end", undo)

    def _guarded(self, ev: EventSpec, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None after logging an ``event_error``: an event that fails at run time
        (a device refusing, an element the model cannot change) never ends the run with a
        traceback; the run goes on and the record says which event failed and why."""
        try:
            return fn()
        except Exception as exc:  # any failure of one event is that event's, not the run's
            line = f" (line {ev.line})" if getattr(ev, "line", None) else ""
            msg = f"{ev.title}{line} {what}: {type(exc).__name__}: {exc}"
            _log.warning("%s", msg)
            self.rt.log("event_error", msg, event=ev.kind, error=type(exc).__name__)
            return None

    def snapshot(self, done: int, total: int, t: float) -> dict[str, Any]:
        """The last step for a live view: worst voltage and loading, alarms, stale, lag."""
        st = getattr(self, "_last", None)

        def ext(a: np.ndarray | None, fn: Any) -> float:
            return float(fn(a)) if a is not None and a.size and np.isfinite(a).any() else math.nan

        lds = [x for x in (st.line_loading, st.trafo_loading) if x is not None] if st else []
        return {
            "done": done,
            "total": total,
            "t": t,
            "converged": bool(st.converged) if st else False,
            "vm_min": ext(st.vm_pu, np.nanmin) if st else math.nan,
            "vm_max": ext(st.vm_pu, np.nanmax) if st else math.nan,
            "loading_max": max((ext(x, np.nanmax) for x in lds), default=math.nan),
            "alarms": self.alarm_count,
            "stale": len(st.stale) if st else 0,
            "deadline_misses": self.deadline_misses,
            "late_s": self.late_s[-1] if self.late_s else 0.0,
            "pace": self.bridge.pace,
            "field": self.rt.field,
        }

    @property
    def env(self) -> simpy.Environment:
        return self.rt.env


def run_start(scenario: Scenario) -> _dt.datetime:
    """The absolute time of the run's ``time_s = 0``: the file's ISO ``start``, else its time of
    day on the date the run is made (local time, no zone, as the file states it)."""
    if scenario.start_dt is not None:
        return scenario.start_dt.replace(tzinfo=None)
    midnight = _dt.datetime.combine(_dt.date.today(), _dt.time())
    return midnight + _dt.timedelta(seconds=scenario.start_sod)


def default_out_dir(scenario: Scenario, base: Path | str = "results") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(base) / f"{scenario.name}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(base) / f"{scenario.name}-{stamp}-{n}"
    return out


def run_scenario(
    scenario: Scenario | Path | str,
    *,
    out_dir: Path | str | None = None,
    pace: str | None = None,
    speed: float | None = None,
    hardware: str | None = None,
    junit: Path | str | None = None,
    progress: Progress | None = None,
    write_files: bool = True,
    on_step: OnStep | None = None,
    serve: tuple[int, int] | None = None,
    twin_server: int | None = None,
    on_ready: Callable[[dict[str, str]], None] | None = None,
    security: Any = None,
) -> RunResult:
    """Run a scenario and write its results folder (see the module docstring).

    Args:
        scenario: a parsed Scenario or a scenario file.
        out_dir: results folder (default ``./results/<name>-<timestamp>``).
        pace, speed, hardware: override the file's values.
        junit: also write the JUnit XML here (it is always written into the results folder).
        progress: called after every step with (steps done, steps in all, t).
        write_files: False keeps everything in memory (tests).
        on_step: called after every step with ``_Stepper.snapshot`` (live views).
        serve: (OPC UA port, Modbus port) to serve the embedded emulated substation on for an
            outside controller while the run goes (0: a free port); needs hardware = "emulated".
        twin_server: port of the twin's read-only OPC UA server for the run (0: free; None: none).
        on_ready: called with the field's endpoints once it runs (before the first step).
        security: :class:`hil.security.run.RunSecurity` of the twin's server, the served
            substation and the embedded links (None: the secure defaults).

    Raises:
        ConfigError: the scenario does not fit its grid. Errors during the run are caught,
        recorded (results so far are kept) and returned in ``RunResult.error``.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    if pace is not None or speed is not None or hardware is not None:
        import dataclasses

        sc = dataclasses.replace(
            sc,
            pace=pace or sc.pace,
            speed=float(speed) if speed is not None else sc.speed,
            hardware=hardware or sc.hardware,
        )
    t_start = time.perf_counter()
    where = str(sc.path) if sc.path else "<scenario>"
    if serve is not None and (sc.hardware != "emulated"):
        raise ConfigError(
            where,
            "hardware",
            '--serve exposes the embedded emulated substation: expected hardware = "emulated", '
            f"found {sc.hardware!r}",
        )
    if twin_server is not None and sc.hardware == "none":
        raise ConfigError(
            where,
            "hardware",
            '--twin-server publishes the sync loop\'s state: expected hardware = "emulated" or '
            'a hardware file, found "none"',
        )
    net = load_grid(sc)
    hw_cfg = load_hardware_of(sc)
    # validated against the point map that will actually run (the hardware file's, if any)
    pointmap = field_pointmap(sc, net, hw_cfg)
    assert_against_grid(sc, net, pointmap, hw_cfg)
    model = make_model(net, sc.backend)
    profiles = [resolve_profile(p, net, start_sod=sc.start_sod, seed=sc.seed) for p in sc.profiles]
    out = None
    if write_files:
        out = Path(out_dir) if out_dir is not None else default_out_dir(sc)
    # parts written on a worker thread: pyarrow's write runs beside the steps on a second core
    # the whole-run file in one row group up to 100k rows: ~10x faster to write and to read
    rec = Recorder(out, flush_every=60, start=run_start(sc), background_writes=True,
                   file_row_group=100_000)  # fmt: skip
    clock = SimClock(0.0)
    fld: Field
    if sc.hardware == "none":
        fld = LocalField(model, rec)
    elif hw_cfg is not None:
        fld = HardwareField(
            hardware=hw_cfg,
            pointmap=pointmap,
            net=net,
            model=model,
            mode=sc.mode,
            links=(),
            recorder=rec,
            clock=clock,
            seed=sc.seed,
            twin_server_port=twin_server,
            security=security,
        )
    else:
        fld = EmulatedField(
            net=net,
            model=model,
            mode=sc.mode,
            links=sc.links,
            recorder=rec,
            clock=clock,
            seed=sc.seed,
            plant_model_factory=lambda n: make_model(n, sc.backend),
            serve=serve,
            twin_server_port=twin_server,
            security=security,
        )
    env = simpy.Environment()
    rt = TwinRuntime(sc, env, model, fld, rec, profiles)
    labels = {
        t: list(element_labels(net, t)) for t in ("bus", "line", "trafo", "switch") if t in net
    }
    checks = [build_check(c, labels, start_sod=sc.start_sod) for c in sc.checks]
    bridge = Bridge(env, pace=sc.pace, speed=sc.speed)
    stepper = _Stepper(sc, rt, bridge, checks, progress, on_step)
    rec.event(
        0.0,
        "start",
        f"scenario {sc.name}: {sc.steps} steps of {sc.step:g} s, "
        f"pace {sc.pace}, field {fld.description}",
        seed=sc.seed,
    )

    async def main() -> None:
        await fld.start()
        audit = fld.audit  # the field's audit of protocol writes (None: no server)
        if audit is not None and out is not None:
            audit.stream_to(out / "audit.jsonl")
        ends = fld.endpoints()
        if ends:
            rec.event(0.0, "serving", "; ".join(f"{k} {v}" for k, v in ends.items()), **ends)
            if on_ready is not None:
                on_ready(ends)
        used = fld.links_used()
        if sc.hardware != "none":
            rec.event(
                0.0,
                "field",
                f"{fld.description}; links: {', '.join(used) or 'none'}",
                links=used,
            )
        try:
            env.process(stepper.step_process())
            for ev in sc.events:
                if ev.at is not None:
                    env.process(stepper.timed_event(ev))
            await bridge.run(until=sc.duration)
        finally:
            await fld.stop()
            if audit is not None:
                audit.close()

    error = ""
    t_run = time.perf_counter()
    if out is not None:
        _write_provisional(out, sc)
    try:
        run_blocking(main)
        if stepper.failure is not None:
            raise stepper.failure
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM through the CLI's handler
        error = (
            f"interrupted by {getattr(exc, 'reason', 'Ctrl-C (SIGINT)')} at "
            f"{format_clock(float(env.now), sc.start_sod)} after {stepper.steps_done} of "
            f"{sc.steps + 1} steps"
        )
        _log.info("scenario %s %s", sc.name, error)
        rec.event(float(env.now), "interrupted", error)
    except (TwinError, RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:
        error = _describe_error(exc)
        _log.error("scenario %s stopped at t=%s: %s", sc.name, env.now, error)
        try:
            rec.event(float(env.now), "error", error)
        except OSError:  # events.csv itself is what cannot be written
            pass
    run_s = time.perf_counter() - t_run
    results = [c.result() for c in checks]
    unwritten: list[str] = []
    try:
        rec.event(
            float(env.now),
            "end",
            f"{stepper.steps_done} steps, "
            f"{sum(r.passed for r in results)}/{len(results)} checks passed",
        )
    except OSError as exc:
        unwritten.append(f"events.csv ({exc.strerror or exc})")
    try:
        rec.close()
    except OSError as exc:  # the flushed parts (timeseries.parts/) stay readable
        unwritten.append(f"timeseries.parquet ({exc.strerror or exc})")
    if out is not None:
        try:
            _write_timing(out / TIMING_FILE, stepper, fld, rec.iso_time)
        except (OSError, ValueError) as exc:  # the timing file is for the report only
            _log.warning("could not write %s: %s", out / TIMING_FILE, exc)
    if unwritten and not error:
        error = "could not write the results: " + ", ".join(unwritten)
    elif unwritten:
        error += "; could not write " + ", ".join(unwritten)
    wall = time.perf_counter() - t_start
    summary = _summary(sc, stepper, bridge, fld, model, results, wall, run_s, error)
    res = RunResult(sc, out, results, stepper.steps_done, wall, summary, rec, error)
    from scenarios.results import write_junit, write_summary

    targets: list[tuple[Path, Callable[[Path], None]]] = []
    if out is not None:
        targets += [
            (out / "summary.json", lambda p: write_summary(p, summary)),
            (out / "junit.xml", lambda p: write_junit(p, res)),
        ]
    if junit is not None:
        targets.append((Path(junit), lambda p: write_junit(p, res)))
    for path, write in targets:
        try:
            write(path)
        except OSError as exc:  # as far as the disk allows: say so, keep going
            res.unwritten.append(f"{path}: {exc.strerror or exc}")
            _log.error("could not write %s: %s", path, exc.strerror or exc)
    return res


def _describe_error(exc: BaseException) -> str:
    """One line for the run's error: an OSError names its file and reason, not its class."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"could not write the results:{where}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _write_provisional(out: Path, sc: Scenario) -> None:
    """A summary.json saying "not finished", replaced at the end: after a hard kill (no code
    runs) the folder still says what it is and why it has no verdict."""
    from scenarios.results import write_summary

    try:
        write_summary(
            out / "summary.json",
            {
                "scenario": sc.name,
                "file": str(sc.path) if sc.path else None,
                "grid": sc.grid,
                "status": "running",
                "passed": False,
                "error": "the run did not finish: the process ended before writing its summary "
                "(killed?); the rows flushed so far are in timeseries.parts/",
                "steps_planned": sc.steps + 1,
                "checks": [],
            },
        )
    except OSError as exc:
        _log.warning("could not write %s: %s", out / "summary.json", exc.strerror or exc)


TIMING_FILE = "timing.csv"


def _write_timing(
    path: Path, st: _Stepper, fld: Any, iso_time: Callable[[float], str] | None = None
) -> None:
    """Per-step wall durations (ms) for the report: the field step, lateness against the next
    step's due time (realtime pace), and the sync loop's phases where the field has one."""
    import csv

    n = len(st.solve_s)
    cols: dict[str, list[float]] = {
        "field_step_ms": [x * 1e3 for x in st.solve_s],
        "late_ms": [x * 1e3 for x in st.late_s] + [math.nan] * (n - len(st.late_s)),
    }
    sync = getattr(fld, "sync", None)
    if sync is not None and hasattr(sync, "phase_durations"):
        from hil.sync import PHASES

        for ph in PHASES:
            v = [float(x) * 1e3 for x in sync.phase_durations(ph)][-n:]
            cols[f"{ph}_ms"] = [math.nan] * (n - len(v)) + v
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        stamp = ["time"] if iso_time is not None else []  # last, as in events.csv
        w.writerow(["time_s", *cols, *stamp])
        for k in range(n):
            t = k * st.sc.step
            w.writerow(
                [
                    f"{t:g}",
                    *(f"{c[k]:.4f}" for c in cols.values()),
                    *([iso_time(t)] if iso_time is not None else []),
                ]
            )


def _summary(
    sc: Scenario,
    st: _Stepper,
    bridge: Bridge,
    fld: Field,
    model: Any,
    results: list[CheckResult],
    wall: float,
    run_s: float,
    error: str,
) -> dict[str, Any]:
    solve = np.asarray(st.solve_s) if st.solve_s else np.zeros(1)
    return {
        "scenario": sc.name,
        "file": str(sc.path) if sc.path else None,
        "description": sc.description,
        "grid": sc.grid,
        "mode": sc.mode,
        "hardware": sc.hardware,
        "links": fld.links_used(),
        "pace": sc.pace,
        "speed": sc.speed,
        "seed": sc.seed,
        "start": format_clock(0.0, sc.start_sod),
        "duration_s": sc.duration,
        "step_s": sc.step,
        "status": "stopped" if error else "finished",
        "passed": not error and all(r.passed for r in results),
        "error": error,
        "steps": st.steps_done,
        "steps_planned": sc.steps + 1,
        "not_converged_steps": st.not_converged,
        "stale_steps": st.stale_steps,
        "alarms": st.alarm_count,
        "deadline_misses": st.deadline_misses,
        "checks": [r.as_dict() for r in results],
        "timings": {
            "wall_s": round(wall, 4),
            "run_s": round(run_s, 4),
            "steps_per_s": round(st.steps_done / run_s, 1) if run_s > 0 else None,
            "field_step_p50_ms": round(float(np.percentile(solve, 50)) * 1e3, 3),
            "field_step_p99_ms": round(float(np.percentile(solve, 99)) * 1e3, 3),
            "field_step_max_ms": round(float(solve.max()) * 1e3, 3),
            "pace": bridge.stats.summary(),
        },
        "field": fld.stats(),
        "backend": backend_info(model),
        "versions": dict(_versions()),
    }


_VERSIONS: dict[str, str] | None = None


def _versions() -> dict[str, str]:
    """The package versions of this process (read once: ~10 ms of metadata look-ups a run,
    repeated by every case of a sweep worker)."""
    global _VERSIONS
    if _VERSIONS is None:
        from scenarios.results import versions

        _VERSIONS = versions()
    return _VERSIONS


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for a few statements (the main thread only): the CLI's handler
    raises where the code is, and between recording a step's row and counting the step it
    would leave a row the summary does not count. A held signal is delivered right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
