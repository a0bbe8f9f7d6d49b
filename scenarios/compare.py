"""Run-to-run regression: compare two runs (results folders or baselines) point by point.

A run is read into a :class:`Compact` view holding only what the comparison needs:

- ``steps``: per recorded step, the lowest, highest and mean bus voltage and the highest line
  and transformer loading (every step);
- ``values``: per-element bus voltages (``bus.vm_pu[X]``), line/transformer loadings
  (``line.loading_percent[X]``, ``trafo.loading_percent[X]``) and, where recorded, load and
  sgen active powers (``load.p_mw[X]``, ``sgen.p_mw[X]``) at the steps stored (every step of a
  results folder; a baseline keeps a subsample at reduced precision);
- ``states``: switch states and tap positions as change lists (element, time, value);
- ``events``: (time, kind, element) of every event;
- ``checks``: name -> passed.

Both runs are aligned on simulated time. A difference in a voltage or loading is tolerated when
the other run holds a value within tolerance at some time within ``time_tol`` (a hardware run
that sees a switch open a few seconds later is not a regression when ``time_tol`` covers it);
state changes and events are matched within ``time_tol``. Anything one run has and the other
does not (columns, event kinds) is reported as a note and not held against either run, so a
baseline stays usable when the engine starts recording more.

A baseline (``scenarios/baselines/<name>/``) is the compact view of one known-good run written
as text (CSV/JSON) so that a refreshed baseline's diff reads in review; see docs/report.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import ConfigError

BASELINE_FILE = "baseline.json"
BASELINE_FORMAT = 1
BASELINES_DIR = Path(__file__).resolve().parent / "baselines"
#: Continuous per-element quantities compared (prefix, tolerance kind, decimals kept in a baseline)
CONTINUOUS: tuple[tuple[str, str, int], ...] = (
    ("bus.vm_pu", "vm", 5),
    ("line.loading_percent", "loading", 2),
    ("trafo.loading_percent", "loading", 2),
    ("load.p_mw", "p", 5),
    ("sgen.p_mw", "p", 5),
)
#: Discrete per-element quantities, compared as change lists.
DISCRETE: tuple[str, ...] = ("switch.closed", "trafo.tap_pos")
STEP_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("vm_min", "vm", 5),
    ("vm_max", "vm", 5),
    ("vm_mean", "vm", 5),
    ("line_loading_max", "loading", 2),
    ("trafo_loading_max", "loading", 2),
)
#: Event kinds never compared: bookkeeping and wall-clock artefacts.
IGNORED_EVENTS = frozenset({"start", "end", "deadline_missed", "error"})
#: Event kinds the engine records as of this writing. A known kind is compared even when only
#: one run has it (a switching event that went missing is a regression); an unknown kind (one a
#: newer engine records) is compared only when both runs have it, else it is a note.
KNOWN_EVENTS = frozenset({
    "switch_open", "switch_close", "line_outage", "line_return", "trafo_outage", "trafo_return",
    "sgen_outage", "sgen_return", "load_outage", "load_return", "tap_change",
    "tap_change_refused", "fault", "fault_cleared", "fault_end", "trigger", "setpoint",
    "comms_loss", "comms_restore", "device_restart", "meas_noise", "meas_bias", "meas_frozen",
    "process", "event_error",
})  # fmt: skip
#: Keys of an event's ``fields`` that name the element it is about, in order of preference.
_ELEMENT_KEYS = ("element", "point", "line", "breaker", "switch", "target", "device", "table")
_SAMPLES = 60  # per-element samples a baseline keeps


@dataclass
class Compact:
    """The comparable content of one run (see the module docstring)."""

    source: Path
    kind: str  # "results" or "baseline"
    scenario: str
    steps: Any  # DataFrame indexed by time_s
    values: Any  # DataFrame indexed by time_s, columns ``table.column[label]``
    states: list[tuple[str, float, float]]  # (column name, time_s, value), sorted by time
    events: list[tuple[float, str, str]]  # (time_s, kind, element or "")
    checks: dict[str, bool]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    what: str  # "bus.vm_pu", "event", "check", ...
    element: str
    time_s: float | None
    a: Any
    b: Any
    excess: float  # |a - b| / tolerance (inf for a missing event or a changed verdict)
    detail: str = ""


@dataclass
class Comparison:
    a: Compact
    b: Compact
    differences: list[Difference]
    notes: list[str]
    compared: dict[str, int]

    @property
    def equal(self) -> bool:
        return not self.differences


# --- reading -------------------------------------------------------------------------------------
def _element_of(fields: Any) -> str:
    if not isinstance(fields, str) or not fields:
        return ""
    try:
        d = json.loads(fields)
    except ValueError:
        return ""
    if not isinstance(d, dict):
        return ""
    for k in _ELEMENT_KEYS:
        if k in d and d[k] not in (None, ""):
            return str(d[k])
    return ""


def _step_frame(ts: Any) -> Any:
    import pandas as pd

    t = ts["time_s"].to_numpy(dtype=float)

    def cols(prefix: str) -> np.ndarray:
        c = [x for x in ts.columns if x.startswith(prefix + "[")]
        return ts[c].to_numpy(dtype=float) if c else np.full((len(ts), 0), np.nan)

    vm, ll, tl = cols("bus.vm_pu"), cols("line.loading_percent"), cols("trafo.loading_percent")

    def agg(fn: Any, a: np.ndarray) -> np.ndarray:
        if a.shape[1] == 0:
            return np.full(len(t), np.nan)
        with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore", RuntimeWarning)
            return np.asarray(fn(a, axis=1), dtype=float)

    return pd.DataFrame(
        {
            "vm_min": agg(np.nanmin, vm),
            "vm_max": agg(np.nanmax, vm),
            "vm_mean": agg(np.nanmean, vm),
            "line_loading_max": agg(np.nanmax, ll),
            "trafo_loading_max": agg(np.nanmax, tl),
        },
        index=pd.Index(np.round(t, 6), name="time_s"),
    )


def _states_of(ts: Any) -> list[tuple[str, float, float]]:
    """Initial value and every change of each discrete column."""
    t = ts["time_s"].to_numpy(dtype=float)
    out: list[tuple[str, float, float]] = []
    for prefix in DISCRETE:
        for c in (x for x in ts.columns if x.startswith(prefix + "[")):
            v = ts[c].to_numpy(dtype=float)
            if not len(v):
                continue
            out.append((c, float(t[0]), float(v[0])))
            same = (v[1:] == v[:-1]) | (np.isnan(v[1:]) & np.isnan(v[:-1]))
            for k in np.flatnonzero(~same) + 1:
                out.append((c, float(t[k]), float(v[k])))
    out.sort(key=lambda x: (x[1], x[0]))
    return out


def _events_of(df: Any) -> list[tuple[float, str, str]]:
    out = []
    has_el = "element" in df.columns
    for i in range(len(df)):
        r = df.iloc[i]
        el = str(r["element"]) if has_el and r["element"] == r["element"] else ""
        if not has_el:
            el = _element_of(r.get("fields"))
        out.append((float(r["time_s"]), str(r["kind"]), el))
    return out


def load_compact(path: Path | str) -> Compact:
    """Read a results folder or a baseline folder.

    Raises:
        ConfigError: neither (missing folder, or none of summary.json / baseline.json in it).
    """
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(str(p), "run", "expected a results folder or a baseline folder, "
                          "found no folder")  # fmt: skip
    if (p / BASELINE_FILE).is_file():
        return _load_baseline(p)
    from scenarios.report import load_run

    rd = load_run(p)  # raises ConfigError naming what is missing
    import pandas as pd

    ts = rd.ts.copy()
    ts["time_s"] = np.round(ts["time_s"].to_numpy(dtype=float), 6)
    keep = [c for c in ts.columns if any(c.startswith(q + "[") for q, _, _ in CONTINUOUS)]
    values = ts.set_index("time_s")[keep]
    values = values[~values.index.duplicated(keep="last")]
    ev = rd.events
    events = _events_of(ev) if len(ev) else []
    checks = {str(c.get("name")): bool(c.get("passed")) for c in rd.summary.get("checks", [])}
    del pd
    return Compact(p, "results", str(rd.summary.get("scenario", p.name)), _step_frame(ts),
                   values, _states_of(ts), events, checks, dict(rd.summary))  # fmt: skip


def _load_baseline(p: Path) -> Compact:
    import pandas as pd

    try:
        meta = json.loads((p / BASELINE_FILE).read_text(encoding="utf-8"))
        steps = pd.read_csv(p / "steps.csv").set_index("time_s")
        el = pd.read_csv(p / "elements.csv")
        st = pd.read_csv(p / "states.csv")
        ev = pd.read_csv(p / "events.csv", keep_default_na=False, na_values=[""])
    except (OSError, ValueError, KeyError, pd.errors.EmptyDataError) as exc:
        raise ConfigError(str(p), "baseline", f"expected baseline.json, steps.csv, elements.csv, "
                          f"states.csv and events.csv, readable: {exc}") from None  # fmt: skip
    steps.index = np.round(steps.index.to_numpy(dtype=float), 6)
    steps.index.name = "time_s"
    # elements.csv: one row per element quantity, one column per sampled time ("t=<s>").
    el = el.set_index("quantity")
    times = [float(c[2:]) for c in el.columns]
    values = el.T
    values.index = pd.Index(np.round(times, 6), name="time_s")
    values.columns.name = None
    states = [(str(q), float(t), float(v)) for q, t, v in zip(st["quantity"], st["time_s"],
                                                               st["value"])]  # fmt: skip
    events = _events_of(ev)
    checks = {str(c["name"]): bool(c["passed"]) for c in meta.get("checks", [])}
    return Compact(p, "baseline", str(meta.get("scenario", p.name)), steps, values, states,
                   events, checks, meta)  # fmt: skip


# --- writing a baseline --------------------------------------------------------------------------
def write_baseline(run_dir: Path | str, dest: Path | str, *, samples: int = _SAMPLES) -> Path:
    """Write the compact, text form of a results folder to ``dest`` (created or replaced)."""
    import pandas as pd

    c = load_compact(run_dir)
    if c.kind != "results":
        raise ConfigError(str(run_dir), "run", "expected a results folder, found a baseline")
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    s = c.meta
    n = len(c.values)
    every = max(1, math.ceil(n / samples)) if n else 1
    meta = {
        "format": BASELINE_FORMAT,
        "scenario": c.scenario,
        "file": s.get("file"),
        "grid": s.get("grid"),
        "mode": s.get("mode"),
        "hardware": s.get("hardware"),
        "pace": s.get("pace"),
        "seed": s.get("seed"),
        "start": s.get("start"),
        "step_s": s.get("step_s"),
        "steps": s.get("steps"),
        "passed": s.get("passed"),
        "element_sample_every": every,
        "checks": [
            {"name": k, "kind": x.get("kind"), "passed": bool(x.get("passed"))}
            for k, x in ((str(x.get("name")), x) for x in s.get("checks", []))
        ],  # fmt: skip
        "refresh": f"gridtwin baseline update {c.scenario}",
    }
    (d / BASELINE_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    steps = c.steps.copy()
    for col, _, nd in STEP_COLUMNS:
        steps[col] = steps[col].round(nd)
    steps.to_csv(d / "steps.csv", float_format="%.6g", lineterminator="\n")
    sampled = c.values.iloc[::every]
    digits = {}
    for col in sampled.columns:
        for q, _, nd in CONTINUOUS:
            if col.startswith(q + "["):
                digits[col] = nd
    el = sampled.round(digits).T
    el.columns = [f"t={t:g}" for t in sampled.index]
    el.index.name = "quantity"
    el.to_csv(d / "elements.csv", lineterminator="\n")
    pd.DataFrame(c.states, columns=["quantity", "time_s", "value"]).to_csv(
        d / "states.csv", index=False, float_format="%.6g", lineterminator="\n"
    )
    ev_rows = []
    src = c.source / "events.csv"
    msgs = pd.read_csv(src, keep_default_na=False)["message"].tolist() if src.is_file() else []
    for i, (t, kind, elem) in enumerate(c.events):
        ev_rows.append((t, kind, elem, msgs[i] if i < len(msgs) else ""))
    pd.DataFrame(ev_rows, columns=["time_s", "kind", "element", "message"]).to_csv(
        d / "events.csv", index=False, float_format="%.6g", lineterminator="\n"
    )
    return d


def baseline_dir(name: str) -> Path:
    return BASELINES_DIR / name


# --- comparing -----------------------------------------------------------------------------------
def _tol_for(kind: str, vm_tol: float, loading_tol: float, p_tol: float = 1e-4) -> float:
    return {"vm": vm_tol, "loading": loading_tol}.get(kind, p_tol)


def _shifted_ok(a_val: float, b_series: Any, t: float, time_tol: float, tol: float) -> bool:
    """Whether ``b`` holds a value within ``tol`` of ``a_val`` at some time within time_tol."""
    if time_tol <= 0:
        return False
    idx = b_series.index.to_numpy(dtype=float)
    lo, hi = np.searchsorted(idx, [t - time_tol - 1e-9, t + time_tol + 1e-9])
    w = b_series.to_numpy(dtype=float)[lo:hi]
    return bool(np.any(np.abs(w - a_val) <= tol))


def _compare_frame(
    what_of: Any,
    a: Any,
    b: Any,
    cols: list[str],
    tol_of: Any,
    time_tol: float,
    out: list[Difference],
) -> int:
    """Compare columns of two time-indexed frames at their common times; returns values seen."""
    common = a.index.intersection(b.index)
    if not len(common) or not cols:
        return 0
    A = a.loc[common, cols].to_numpy(dtype=float)
    B = b.loc[common, cols].to_numpy(dtype=float)
    tol = np.asarray([tol_of(c) for c in cols], dtype=float)
    with np.errstate(invalid="ignore"):
        d = np.abs(A - B)
        bad = (d > tol + 1e-12) | (np.isnan(A) != np.isnan(B))
    ts = common.to_numpy(dtype=float)
    for i, j in zip(*np.nonzero(bad)):
        c = cols[j]
        if np.isfinite(A[i, j]) and _shifted_ok(A[i, j], b[c], ts[i], time_tol, tol[j]):
            continue
        ex = float(d[i, j] / tol[j]) if np.isfinite(d[i, j]) else math.inf
        what, el = what_of(c)
        out.append(Difference(what, el, float(ts[i]), float(A[i, j]), float(B[i, j]), ex))
    return int(A.size)


def _split(col: str) -> tuple[str, str]:
    q, _, rest = col.partition("[")
    return q, rest[:-1] if rest.endswith("]") else rest


def _match_times(ta: list[float], tb: list[float], tol: float) -> tuple[list[int], list[int]]:
    """Greedy in-order matching of two sorted time lists within ``tol``: unmatched a, b."""
    used = [False] * len(tb)
    miss_a = []
    for i, t in enumerate(ta):
        best = -1
        for j, u in enumerate(tb):
            if not used[j] and abs(u - t) <= tol + 1e-9:
                if best < 0 or abs(u - t) < abs(tb[best] - t):
                    best = j
        if best < 0:
            miss_a.append(i)
        else:
            used[best] = True
    return miss_a, [j for j, u in enumerate(used) if not u]


def compare(
    a: Compact | Path | str,
    b: Compact | Path | str,
    *,
    vm_tol: float = 1e-4,
    loading_tol: float = 0.1,
    time_tol: float = 1.0,
    p_tol: float = 1e-4,
) -> Comparison:
    """Compare run ``a`` with run ``b`` (see the module docstring)."""
    ca = a if isinstance(a, Compact) else load_compact(a)
    cb = b if isinstance(b, Compact) else load_compact(b)
    diffs: list[Difference] = []
    notes: list[str] = []
    seen: dict[str, int] = {}
    if ca.scenario != cb.scenario:
        notes.append(f"different scenarios: {ca.scenario!r} and {cb.scenario!r}")
    common_t = ca.steps.index.intersection(cb.steps.index)
    only = len(ca.steps.index) + len(cb.steps.index) - 2 * len(common_t)
    if not len(common_t):
        diffs.append(Difference("time", "", None, len(ca.steps), len(cb.steps), math.inf,
                                "no simulated time in common"))  # fmt: skip
    elif only:
        notes.append(f"{only} recorded times are in one run only (compared the "
                     f"{len(common_t)} in both)")  # fmt: skip

    # Per-step aggregates.
    kinds = {c: k for c, k, _ in STEP_COLUMNS}
    cols = [c for c in kinds if c in ca.steps.columns and c in cb.steps.columns]
    seen["per-step aggregates"] = _compare_frame(
        lambda c: (f"step.{c}", "all"), ca.steps, cb.steps, cols,
        lambda c: _tol_for(kinds[c], vm_tol, loading_tol), time_tol, diffs,
    )  # fmt: skip

    # Per-element values.
    def tol_of(c: str) -> float:
        for q, k, _ in CONTINUOUS:
            if c.startswith(q + "["):
                return _tol_for(k, vm_tol, loading_tol, p_tol)
        return math.inf

    ea, eb = set(ca.values.columns), set(cb.values.columns)
    cols = sorted(ea & eb)
    if ea ^ eb:
        notes.append(f"{len(ea - eb)} element columns only in A, {len(eb - ea)} only in B "
                     "(not compared)")  # fmt: skip
    seen["element values"] = _compare_frame(
        _split, ca.values, cb.values, cols, tol_of, time_tol, diffs
    )

    # Discrete states: initial value and changes, matched within time_tol.
    sa: dict[str, list[tuple[float, float]]] = {}
    sb: dict[str, list[tuple[float, float]]] = {}
    for q, t, v in ca.states:
        sa.setdefault(q, []).append((t, v))
    for q, t, v in cb.states:
        sb.setdefault(q, []).append((t, v))
    n_states = 0
    for q in sorted(set(sa) & set(sb)):
        what, el = _split(q)
        la, lb = sa[q], sb[q]
        n_states += len(la)
        if la[0][1] != lb[0][1]:
            diffs.append(Difference(what, el, la[0][0], la[0][1], lb[0][1], math.inf,
                                    "different initial state"))  # fmt: skip
        for v in sorted({x[1] for x in la[1:]} | {x[1] for x in lb[1:]}):
            ta = [t for t, x in la[1:] if x == v]
            tb = [t for t, x in lb[1:] if x == v]
            ma, mb = _match_times(ta, tb, time_tol)
            for i in ma:
                diffs.append(
                    Difference(
                        what,
                        el,
                        ta[i],
                        v,
                        None,
                        math.inf,
                        f"changed to {v:g} in A only (within {time_tol:g} s)",
                    )
                )
            for j in mb:
                diffs.append(
                    Difference(
                        what,
                        el,
                        tb[j],
                        None,
                        v,
                        math.inf,
                        f"changed to {v:g} in B only (within {time_tol:g} s)",
                    )
                )
    if set(sa) ^ set(sb):
        notes.append(f"{len(set(sa) ^ set(sb))} switch/tap columns in one run only "
                     "(not compared)")  # fmt: skip
    seen["switch/tap changes"] = n_states

    # Events: per kind present in both runs, matched by element within time_tol.
    from scenarios.events import HANDLERS

    known = KNOWN_EVENTS | set(HANDLERS)
    ka = {k for _, k, _ in ca.events} - IGNORED_EVENTS
    kb = {k for _, k, _ in cb.events} - IGNORED_EVENTS
    for k in sorted((ka ^ kb) - known):
        side = "A" if k in ka else "B"
        n = sum(1 for _, x, _ in (ca.events if side == "A" else cb.events) if x == k)
        notes.append(f"event kind {k!r} only in {side} ({n} events; not compared)")
    n_ev = 0
    for k in sorted((ka & kb) | ((ka | kb) & known)):
        groups: dict[str, tuple[list[float], list[float]]] = {}
        for t, x, el in ca.events:
            if x == k:
                groups.setdefault(el, ([], []))[0].append(t)
        for t, x, el in cb.events:
            if x == k:
                groups.setdefault(el, ([], []))[1].append(t)
        for el, (ta, tb) in sorted(groups.items()):
            n_ev += len(ta)
            ma, mb = _match_times(sorted(ta), sorted(tb), time_tol)
            for i in ma:
                diffs.append(Difference("event", el, sorted(ta)[i], k, None, math.inf,
                                        f"{k} in A only (within {time_tol:g} s)"))  # fmt: skip
            for j in mb:
                diffs.append(Difference("event", el, sorted(tb)[j], None, k, math.inf,
                                        f"{k} in B only (within {time_tol:g} s)"))  # fmt: skip
    seen["events"] = n_ev

    # Verdicts of checks both runs have.
    for name in sorted(set(ca.checks) & set(cb.checks)):
        if ca.checks[name] != cb.checks[name]:
            diffs.append(Difference("check", name, None, "pass" if ca.checks[name] else "FAIL",
                                    "pass" if cb.checks[name] else "FAIL", math.inf))  # fmt: skip
    seen["checks"] = len(set(ca.checks) & set(cb.checks))
    diffs.sort(key=lambda d: (-d.excess, d.time_s if d.time_s is not None else -1.0))
    return Comparison(ca, cb, diffs, notes, seen)


def format_clock_of(c: Compact, t: float | None) -> str:
    if t is None:
        return "-"
    from scenarios.report import _parse_clock

    s = int(round(t + _parse_clock(str(c.meta.get("start") or "00:00"))))
    return f"{t:g} s ({(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:{s % 60:02d})"


def render(cmp: Comparison, *, top: int = 20) -> str:
    """A plain-text account: verdict, the largest differences with time and element, notes."""

    def v(x: Any) -> str:
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.6g}"
        return str(x)

    lines = [f"A: {cmp.a.source} ({cmp.a.kind}, {cmp.a.scenario})",
             f"B: {cmp.b.source} ({cmp.b.kind}, {cmp.b.scenario})",
             "compared: " + ", ".join(f"{n} {k}" for k, n in cmp.compared.items())]  # fmt: skip
    if cmp.equal:
        lines.append("EQUAL within tolerance")
    else:
        by: dict[str, int] = {}
        for d in cmp.differences:
            by[d.what] = by.get(d.what, 0) + 1
        lines.append(f"DIFFERENT: {len(cmp.differences)} differences beyond tolerance ("
                     + ", ".join(f"{n} {k}" for k, n in sorted(by.items())) + ")")  # fmt: skip
        lines.append(f"largest {min(top, len(cmp.differences))}:")
        for d in cmp.differences[:top]:
            ex = "" if not math.isfinite(d.excess) else f"  ({d.excess:.3g} x tolerance)"
            det = f"  {d.detail}" if d.detail else ""
            lines.append(f"  {d.what}[{d.element}] at {format_clock_of(cmp.a, d.time_s)}: "
                         f"A {v(d.a)}  B {v(d.b)}{ex}{det}")  # fmt: skip
    for n in cmp.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
