"""Checks: assertions over a run, each observed on every step inside its time window.

Every check ends as a :class:`CheckResult` (passed, a one-line message, the worst value seen and
the first time it failed); results become ``summary.json`` entries and JUnit test cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scenarios.config import CheckSpec


@dataclass
class StepState:
    """What a step leaves for the checks to look at."""

    t: float
    converged: bool
    vm_pu: np.ndarray | None = None
    line_loading: np.ndarray | None = None
    trafo_loading: np.ndarray | None = None
    switch_closed: np.ndarray | None = None
    stale: tuple[str, ...] = ()
    alarms: tuple[dict[str, Any], ...] = ()
    deadline_miss: bool = False
    field: Any = None  # the field side (emulated substation's store for field_value checks)


@dataclass
class CheckResult:
    name: str
    kind: str
    passed: bool
    message: str
    worst: float | None = None
    first_failure_s: float | None = None
    steps_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "message": self.message,
            "worst": self.worst,
            "first_failure_s": self.first_failure_s,
            "steps_seen": self.steps_seen,
        }


@dataclass
class Check:
    """Base: keeps the window and failure bookkeeping; subclasses implement ``_observe``."""

    spec: CheckSpec
    labels: dict[str, list[str]]  # table -> labels in table order
    index: np.ndarray | None = None  # positions in table order this check looks at
    seen: int = 0
    failures: int = 0
    first_failure: float | None = None
    worst: float | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def observe(self, st: StepState) -> None:
        lo, hi = self.spec.window
        if st.t < lo - 1e-9 or st.t > hi + 1e-9:
            return
        self.seen += 1
        problem = self._observe(st)
        if problem:
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = st.t
                self.detail = problem

    def _observe(self, st: StepState) -> str:
        return ""

    def result(self) -> CheckResult:
        passed = self.failures == 0 and self._final_ok()
        msg = self._message(passed)
        return CheckResult(
            self.spec.name, self.spec.kind, passed, msg, self.worst, self.first_failure, self.seen
        )

    def _final_ok(self) -> bool:
        return True

    def _message(self, passed: bool) -> str:
        if passed:
            return f"passed on {self.seen} steps"
        return (
            f"failed on {self.failures} of {self.seen} steps; first at t={self.first_failure:g} "
            f"s: {self.detail}"
        )


def _positions(labels: list[str], wanted: tuple[str, ...] | None) -> np.ndarray | None:
    if not wanted:
        return None
    pos = {lab: i for i, lab in enumerate(labels)}
    return np.asarray([pos[w] for w in wanted], dtype=int)


class VoltageBand(Check):
    def _observe(self, st: StepState) -> str:
        if st.vm_pu is None:
            return ""
        vm = st.vm_pu if self.index is None else st.vm_pu[self.index]
        lo = float(self.spec.param("min_pu", 0.9))
        hi = float(self.spec.param("max_pu", 1.1))
        ok = np.isfinite(vm)  # de-energised buses carry no voltage to hold in band
        if self.spec.param("energized", False) and not ok.all():
            labels = self.labels["bus"]
            pos = self.index if self.index is not None else np.arange(len(labels))
            dead = [labels[pos[j]] for j in np.flatnonzero(~ok)[:5]]
            return f"bus(es) not supplied: {', '.join(dead)}"
        if not ok.any():
            return ""
        vmin, vmax = float(vm[ok].min()), float(vm[ok].max())
        dev = max(lo - vmin, vmax - hi)
        self._track(vmin, vmax)
        if dev > 0:
            labels = self.labels["bus"]
            pos = self.index if self.index is not None else np.arange(len(labels))
            j = int(np.nanargmin(vm)) if lo - vmin >= vmax - hi else int(np.nanargmax(vm))
            return f"bus {labels[pos[j]]} at {vm[j]:.4f} pu, expected {lo:g}..{hi:g} pu"
        return ""

    def _track(self, vmin: float, vmax: float) -> None:
        self.extra["min"] = min(self.extra.get("min", math.inf), vmin)
        self.extra["max"] = max(self.extra.get("max", -math.inf), vmax)
        self.worst = (
            self.extra["max"]
            if (self.extra["max"] - 1) > (1 - self.extra["min"])
            else self.extra["min"]
        )

    def _message(self, passed: bool) -> str:
        rng = ""
        if "min" in self.extra:
            rng = f" (seen {self.extra['min']:.4f}..{self.extra['max']:.4f} pu)"
        return super()._message(passed) + rng


class Loading(Check):
    table: str = "line"

    def _observe(self, st: StepState) -> str:
        arr = st.line_loading if self.table == "line" else st.trafo_loading
        if arr is None or arr.size == 0:
            return ""
        x = arr if self.index is None else arr[self.index]
        if not np.isfinite(x).any():
            return ""
        limit = float(self.spec.param("max_percent", 100.0))
        j = int(np.nanargmax(x))
        m = float(x[j])
        self.worst = m if self.worst is None else max(self.worst, m)
        if m > limit:
            labels = self.labels[self.table]
            pos = self.index if self.index is not None else np.arange(len(labels))
            return f"{self.table} {labels[pos[j]]} at {m:.1f} %, expected <= {limit:g} %"
        return ""

    def _message(self, passed: bool) -> str:
        w = f" (max {self.worst:.1f} %)" if self.worst is not None else ""
        return super()._message(passed) + w


class LineLoading(Loading):
    table = "line"


class TrafoLoading(Loading):
    table = "trafo"


class _AtTime(Check):
    """A check made once, at the first step at or after its ``at`` (``extra["done"]`` then)."""

    def _final_ok(self) -> bool:
        if "done" not in self.extra:
            self.detail = "the run ended before the check time"
            return False
        return True


class SwitchState(_AtTime):
    def observe(self, st: StepState) -> None:
        at = float(self.spec.param("at"))
        if "done" in self.extra or st.t < at - 1e-9 or st.switch_closed is None:
            return
        self.extra["done"] = True
        self.seen += 1
        want = bool(self.spec.param("closed"))
        pos = self.labels["switch"].index(self.spec.param("element"))
        got = bool(st.switch_closed[pos])
        self.worst = float(got)
        if got != want:
            self.failures += 1
            self.first_failure = st.t
            self.detail = (
                f"switch {self.spec.param('element')} is "
                f"{'closed' if got else 'open'}, expected "
                f"{'closed' if want else 'open'}"
            )

    def _message(self, passed: bool) -> str:
        if not passed and self.failures == 0:
            return self.detail
        return super()._message(passed)


class Converged(Check):
    def _observe(self, st: StepState) -> str:
        return "" if st.converged else "the load flow did not converge"


class NoStale(Check):
    def _observe(self, st: StepState) -> str:
        wanted = self.spec.param("points")
        stale = [p for p in st.stale if not wanted or p in wanted]
        if stale:
            self.worst = float(max(self.worst or 0, len(stale)))
            return f"{len(stale)} stale input(s): {', '.join(stale[:5])}"
        return ""


class NoDivergence(Check):
    def _observe(self, st: StepState) -> str:
        wanted = self.spec.param("points")
        hits = [a for a in st.alarms if not wanted or a["point"] in wanted]
        if hits:
            return f"divergence alarm on {hits[0]['point']}: {hits[0]['message']}"
        return ""


class ExpectAlarm(Check):
    def _observe(self, st: StepState) -> str:
        point = self.spec.param("point")
        for a in st.alarms:
            if a["point"] == point and "at" not in self.extra:
                self.extra["at"] = st.t
            elif a["point"] != point:
                self.extra.setdefault("others", set()).add(a["point"])
        return ""

    def _final_ok(self) -> bool:
        return "at" in self.extra

    def _message(self, passed: bool) -> str:
        point = self.spec.param("point")
        others = sorted(self.extra.get("others", ()))
        tail = f"; alarms on other points: {', '.join(others[:5])}" if others else ""
        if passed:
            return f"alarm on {point} first at t={self.extra['at']:g} s{tail}"
        return f"expected a divergence alarm on {point}, found none in the window{tail}"


class ExpectStale(Check):
    def _observe(self, st: StepState) -> str:
        if self.spec.param("point") in st.stale and "at" not in self.extra:
            self.extra["at"] = st.t
        return ""

    def _final_ok(self) -> bool:
        return "at" in self.extra

    def _message(self, passed: bool) -> str:
        point = self.spec.param("point")
        if passed:
            return f"{point} flagged stale first at t={self.extra['at']:g} s"
        return f"expected {point} to be flagged stale in the window, found it never was"


class FieldValue(_AtTime):
    """A point's value in the field (the emulated substation's store) at a time."""

    def observe(self, st: StepState) -> None:
        at = float(self.spec.param("at"))
        if "done" in self.extra or st.t < at - 1e-9:
            return
        self.extra["done"] = True
        self.seen += 1
        point = self.spec.param("point")
        store = getattr(getattr(st.field, "sub", None), "store", None)
        if store is None:
            self.failures += 1
            self.first_failure = st.t
            self.detail = f"{point}: no field store to read (hardware is not emulated)"
            return
        v = float(store.get(point).value)
        self.worst = v
        lo = self.spec.param("min")
        hi = self.spec.param("max")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.failures += 1
            self.first_failure = st.t
            self.detail = (
                f"{point} = {v:.6g}, expected {lo if lo is not None else '-inf'}.."
                f"{hi if hi is not None else 'inf'}"
            )

    def _message(self, passed: bool) -> str:
        if passed:
            return f"{self.spec.param('point')} = {self.worst:.6g}"
        return self.detail


class Deadline(Check):
    def _observe(self, st: StepState) -> str:
        if st.deadline_miss:
            self.extra["misses"] = self.extra.get("misses", 0) + 1
        self.worst = float(self.extra.get("misses", 0))
        return ""

    def _final_ok(self) -> bool:
        return self.extra.get("misses", 0) <= int(self.spec.param("max_misses", 0))

    def _message(self, passed: bool) -> str:
        n = self.extra.get("misses", 0)
        return (
            f"{n} deadline misses in {self.seen} steps (allowed "
            f"{int(self.spec.param('max_misses', 0))})"
        )


_CLASSES: dict[str, type[Check]] = {
    "voltage_band": VoltageBand,
    "line_loading": LineLoading,
    "trafo_loading": TrafoLoading,
    "switch_state": SwitchState,
    "converged": Converged,
    "no_stale": NoStale,
    "no_divergence": NoDivergence,
    "expect_alarm": ExpectAlarm,
    "expect_stale": ExpectStale,
    "field_value": FieldValue,
    "deadline": Deadline,
}


def build_check(spec: CheckSpec, labels: dict[str, list[str]]) -> Check:
    cls = _CLASSES[spec.kind]
    index = None
    if spec.kind == "voltage_band":
        index = _positions(labels["bus"], spec.param("buses"))
    elif spec.kind == "line_loading":
        index = _positions(labels["line"], spec.param("lines"))
    elif spec.kind == "trafo_loading":
        index = _positions(labels["trafo"], spec.param("trafos"))
    return cls(spec=spec, labels=labels, index=index)
