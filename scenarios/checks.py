"""Checks: assertions over a run, each observed on every step inside its time window.

Every check ends as a :class:`CheckResult` (passed, a one-line message, the worst value seen, the
element it was seen on and when, and the first time it failed); results become ``summary.json``
entries and JUnit test cases.

No check passes on no evidence: a step the check cannot judge (the load flow did not converge,
every bus or branch it watches is dark) is not counted as a passed step, and a check left with no
step to judge at all (every step without data, no step inside its window) fails with "no data".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scenarios.config import CheckSpec
from scenarios.timeparse import format_clock

NOT_CONVERGED = "not converged"


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
    steps_judged: int = 0
    worst_element: str | None = None
    worst_at_s: float | None = None
    no_data: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "message": self.message,
            "worst": self.worst,
            "worst_element": self.worst_element,
            "worst_at_s": self.worst_at_s,
            "first_failure_s": self.first_failure_s,
            "steps_seen": self.steps_seen,
            "steps_judged": self.steps_judged,
            "no_data": self.no_data,
        }


@dataclass
class Check:
    """Base: window, evidence and failure bookkeeping; subclasses implement ``_observe``.

    ``_observe`` returns ``""`` for a step that holds, a problem text for one that fails and
    ``None`` for a step it cannot judge (after calling :meth:`_skip` with the reason).
    """

    spec: CheckSpec
    labels: dict[str, list[str]]  # table -> labels in table order
    index: np.ndarray | None = None  # positions in table order this check looks at
    start_sod: float | None = None  # the scenario's start as seconds of day, for clock times
    seen: int = 0  # steps inside the window
    judged: int = 0  # steps inside the window with something to judge
    failures: int = 0
    first_failure: float | None = None
    worst: float | None = None
    worst_element: str | None = None
    worst_at: float | None = None
    worst_text: str = ""
    detail: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> steps without data
    extra: dict[str, Any] = field(default_factory=dict)
    _badness: float = -math.inf

    def observe(self, st: StepState) -> None:
        lo, hi = self.spec.window
        if st.t < lo - 1e-9 or st.t > hi + 1e-9:
            return
        self.seen += 1
        problem = self._observe(st)
        if problem is None:
            return
        self.judged += 1
        if problem:
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = st.t
                self.detail = problem

    def _observe(self, st: StepState) -> str | None:
        return ""

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _track(
        self, badness: float, value: float, element: str | None, t: float, text: str
    ) -> None:
        """Keep the worst observation (largest ``badness``) with its element and time."""
        if badness > self._badness:
            self._badness = badness
            self.worst, self.worst_element, self.worst_at, self.worst_text = (
                value,
                element,
                t,
                text,
            )

    # -- results ---------------------------------------------------------------------------

    def clock(self, t: float) -> str:
        """``t`` (seconds from the start) as the scenario's clock time."""
        if self.start_sod is None:
            return f"t={t:g} s"
        return format_clock(t, self.start_sod)

    def window_text(self) -> str:
        lo, hi = self.spec.window
        return f"{self.clock(lo)}..{self.clock(hi)}"

    def result(self) -> CheckResult:
        no_data = self._no_data()
        passed = not no_data and self.failures == 0 and self._final_ok()
        msg = self._no_data_message() if no_data else self._message(passed)
        return CheckResult(
            self.spec.name,
            self.spec.kind,
            passed,
            msg,
            self.worst,
            self.first_failure,
            self.seen,
            self.judged,
            self.worst_element,
            self.worst_at,
            no_data,
        )

    def _no_data(self) -> bool:
        """True when the check had nothing to judge; it then fails with "no data"."""
        return self.judged == 0

    def _no_data_message(self) -> str:
        if self.seen == 0:
            return f"no data: no step inside the window {self.window_text()}"
        return (
            f"no data: none of the {self.seen} steps in the window could be judged "
            f"({self._skipped_text()})"
        )

    def _skipped_text(self) -> str:
        return ", ".join(f"{n} {why}" for why, n in self.skipped.items())

    def _final_ok(self) -> bool:
        return True

    def _worst_message(self) -> str:
        if not self.worst_text or self.worst_at is None:
            return ""
        return f"; worst {self.worst_text} at {self.clock(self.worst_at)}"

    def _message(self, passed: bool) -> str:
        tail = ""
        if self.skipped:
            tail = f" ({self.seen - self.judged} more without data: {self._skipped_text()})"
        if passed:
            head = f"passed on {_steps(self.judged)}{tail}"
        else:
            assert self.first_failure is not None
            head = (
                f"failed on {self.failures} of {_steps(self.judged)}{tail}; first at "
                f"{self.clock(self.first_failure)}: {self.detail}"
            )
        return head + self._worst_message() + self._extra_message()

    def _extra_message(self) -> str:
        return ""


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _positions(labels: list[str], wanted: tuple[str, ...] | None) -> np.ndarray | None:
    if not wanted:
        return None
    pos = {lab: i for i, lab in enumerate(labels)}
    return np.asarray([pos[w] for w in wanted], dtype=int)


class VoltageBand(Check):
    """Every watched, supplied bus within [min_pu, max_pu]; with ``energized`` all supplied."""

    def _observe(self, st: StepState) -> str | None:
        if st.vm_pu is None:
            self._skip(NOT_CONVERGED)
            return None
        vm = st.vm_pu if self.index is None else st.vm_pu[self.index]
        labels = self.labels["bus"]
        pos = self.index if self.index is not None else np.arange(len(labels))
        lo = float(self.spec.param("min_pu", 0.9))
        hi = float(self.spec.param("max_pu", 1.1))
        ok = np.isfinite(vm)  # de-energised buses carry no voltage to hold in band
        if not ok.all():
            dark = self.extra.setdefault("dark", {})
            for d in np.flatnonzero(~ok):
                dark.setdefault(labels[pos[d]], st.t)
        if self.spec.param("energized", False) and not ok.all():
            dead = [labels[pos[d]] for d in np.flatnonzero(~ok)[:5]]
            n = int((~ok).sum())
            self._track(math.inf, math.nan, dead[0], st.t, f"{dead[0]} not supplied")
            more = f" and {n - len(dead)} more" if n > len(dead) else ""
            return f"bus(es) not supplied: {', '.join(dead)}{more}"
        if not ok.any():
            self._skip("with every watched bus dark")
            return None
        live = np.flatnonzero(ok)
        v = vm[live]
        margin_lo = lo - v  # > 0: below the band
        margin_hi = v - hi  # > 0: above the band
        bad = np.maximum(margin_lo, margin_hi)
        k = int(np.argmax(bad))
        j = int(live[k])
        name = labels[pos[j]]
        self._track(float(bad[k]), float(vm[j]), name, st.t, f"{name} {vm[j]:.4f} pu")
        self.extra["min"] = min(self.extra.get("min", math.inf), float(v.min()))
        self.extra["max"] = max(self.extra.get("max", -math.inf), float(v.max()))
        if bad[k] > 0:
            return f"bus {name} at {vm[j]:.4f} pu, expected {lo:g}..{hi:g} pu"
        return ""

    def _extra_message(self) -> str:
        rng = ""
        if "min" in self.extra:
            rng = f" (seen {self.extra['min']:.4f}..{self.extra['max']:.4f} pu)"
        dark = self.extra.get("dark")
        if dark and not self.spec.param("energized", False):
            names = list(dark)
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            first = min(dark.values())
            rng += (
                f"; {len(names)} bus(es) dark and not judged, first at {self.clock(first)}: "
                f"{', '.join(names[:3])}{more}"
            )
        return rng


class Loading(Check):
    table: str = "line"

    def _observe(self, st: StepState) -> str | None:
        arr = st.line_loading if self.table == "line" else st.trafo_loading
        if arr is None:
            self._skip(NOT_CONVERGED if not st.converged else f"without {self.table} results")
            return None
        if arr.size == 0:
            self._skip(f"without any {self.table}")
            return None
        x = arr if self.index is None else arr[self.index]
        if not np.isfinite(x).any():
            self._skip(f"with every watched {self.table} out of service")
            return None
        limit = float(self.spec.param("max_percent", 100.0))
        j = int(np.nanargmax(x))
        m = float(x[j])
        labels = self.labels[self.table]
        pos = self.index if self.index is not None else np.arange(len(labels))
        name = labels[pos[j]]
        self._track(m, m, name, st.t, f"{name} {m:.1f} %")
        if m > limit:
            return f"{self.table} {name} at {m:.1f} %, expected <= {limit:g} %"
        return ""


class LineLoading(Loading):
    table = "line"


class TrafoLoading(Loading):
    table = "trafo"


class _AtTime(Check):
    """A check made once, at the first step at or after its ``at`` (``extra["done"]`` then)."""

    def _no_data(self) -> bool:
        return "done" not in self.extra

    def _no_data_message(self) -> str:
        at = self.clock(float(self.spec.param("at")))
        return f"no data: the run ended before the check time {at}"

    def _message(self, passed: bool) -> str:
        if not passed:
            return f"at {self.clock(self.first_failure or 0.0)}: {self.detail}"
        return f"at {self.clock(self.worst_at or 0.0)}: {self.worst_text}"


class SwitchState(_AtTime):
    def observe(self, st: StepState) -> None:
        at = float(self.spec.param("at"))
        if "done" in self.extra or st.t < at - 1e-9 or st.switch_closed is None:
            return
        self.extra["done"] = True
        self.seen += 1
        self.judged += 1
        want = bool(self.spec.param("closed"))
        element = str(self.spec.param("element"))
        pos = self.labels["switch"].index(element)
        got = bool(st.switch_closed[pos])
        self.worst, self.worst_element, self.worst_at = float(got), element, st.t
        self.worst_text = f"switch {element} {'closed' if got else 'open'}"
        if got != want:
            self.failures += 1
            self.first_failure = st.t
            self.detail = (
                f"switch {element} is {'closed' if got else 'open'}, expected "
                f"{'closed' if want else 'open'}"
            )


class Converged(Check):
    def _observe(self, st: StepState) -> str | None:
        return "" if st.converged else "the load flow did not converge"

    def _message(self, passed: bool) -> str:
        if passed:
            return f"converged on all {_steps(self.judged)}"
        assert self.first_failure is not None
        return (
            f"did not converge on {self.failures} of {_steps(self.judged)}; first at "
            f"{self.clock(self.first_failure)}"
        )


class _PerPoint(Check):
    """Counts steps per field point (stale inputs, divergence alarms); worst = most steps."""

    noun: str = ""

    def _count(self, points: list[str], t: float) -> None:
        counts = self.extra.setdefault("counts", {})
        first = self.extra.setdefault("first", {})
        for p in points:
            counts[p] = counts.get(p, 0) + 1
            first.setdefault(p, t)
        if points:
            p = max(counts, key=lambda q: counts[q])
            self.worst, self.worst_element, self.worst_at = float(counts[p]), p, first[p]
            self.worst_text = f"{p} {self.noun} on {_steps(counts[p])}, first"

    def _message(self, passed: bool) -> str:
        msg = super()._message(passed)
        if passed:
            return msg + f"; no {self.noun} point"
        return msg


class NoStale(_PerPoint):
    noun = "stale"

    def _observe(self, st: StepState) -> str | None:
        wanted = self.spec.param("points")
        stale = [p for p in st.stale if not wanted or p in wanted]
        self._count(stale, st.t)
        if stale:
            return f"{len(stale)} stale input(s): {', '.join(stale[:5])}"
        return ""


class NoDivergence(_PerPoint):
    noun = "diverging"

    def _observe(self, st: StepState) -> str | None:
        wanted = self.spec.param("points")
        hits = [
            a
            for a in st.alarms
            if a.get("kind", "divergence") == "divergence" and (not wanted or a["point"] in wanted)
        ]
        self._count([a["point"] for a in hits], st.t)
        if hits:
            return f"divergence alarm on {hits[0]['point']}: {hits[0]['message']}"
        return ""


class ExpectAlarm(Check):
    def _observe(self, st: StepState) -> str | None:
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
            return f"alarm on {point} first at {self.clock(self.extra['at'])}{tail}"
        return (
            f"expected an alarm on {point}, found none in the window "
            f"{self.window_text()} ({_steps(self.judged)}){tail}"
        )


class ExpectStale(Check):
    def _observe(self, st: StepState) -> str | None:
        if self.spec.param("point") in st.stale and "at" not in self.extra:
            self.extra["at"] = st.t
        return ""

    def _final_ok(self) -> bool:
        return "at" in self.extra

    def _message(self, passed: bool) -> str:
        point = self.spec.param("point")
        if passed:
            return f"{point} flagged stale first at {self.clock(self.extra['at'])}"
        return (
            f"expected {point} to be flagged stale in the window {self.window_text()}, "
            f"found it never was ({_steps(self.judged)})"
        )


class FieldValue(_AtTime):
    """A point's value in the field (the emulated substation's store) at a time."""

    def observe(self, st: StepState) -> None:
        at = float(self.spec.param("at"))
        if "done" in self.extra or st.t < at - 1e-9:
            return
        self.extra["done"] = True
        self.seen += 1
        self.judged += 1
        point = str(self.spec.param("point"))
        store = getattr(getattr(st.field, "sub", None), "store", None)
        if store is None:
            self.failures += 1
            self.first_failure = st.t
            self.detail = f"{point}: no field store to read (hardware is not emulated)"
            return
        v = float(store.get(point).value)
        self.worst, self.worst_element, self.worst_at = v, point, st.t
        self.worst_text = f"{point} = {v:.6g}"
        lo = self.spec.param("min")
        hi = self.spec.param("max")
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            self.failures += 1
            self.first_failure = st.t
            self.detail = (
                f"{point} = {v:.6g}, expected {lo if lo is not None else '-inf'}.."
                f"{hi if hi is not None else 'inf'}"
            )


class Deadline(Check):
    def _observe(self, st: StepState) -> str | None:
        if st.deadline_miss:
            self.extra["misses"] = self.extra.get("misses", 0) + 1
            self.extra.setdefault("first", st.t)
        self.worst = float(self.extra.get("misses", 0))
        return ""

    def _final_ok(self) -> bool:
        return self.extra.get("misses", 0) <= int(self.spec.param("max_misses", 0))

    def _message(self, passed: bool) -> str:
        n = self.extra.get("misses", 0)
        first = f", first at {self.clock(self.extra['first'])}" if n else ""
        return (
            f"{n} deadline misses in {_steps(self.judged)}{first} (allowed "
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


def build_check(
    spec: CheckSpec, labels: dict[str, list[str]], *, start_sod: float | None = None
) -> Check:
    """The check for ``spec``; ``start_sod`` (the scenario's start) makes messages clock times."""
    cls = _CLASSES[spec.kind]
    index = None
    if spec.kind == "voltage_band":
        index = _positions(labels["bus"], spec.param("buses"))
    elif spec.kind == "line_loading":
        index = _positions(labels["line"], spec.param("lines"))
    elif spec.kind == "trafo_loading":
        index = _positions(labels["trafo"], spec.param("trafos"))
    return cls(spec=spec, labels=labels, index=index, start_sod=start_sod)
