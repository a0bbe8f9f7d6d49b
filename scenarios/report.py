"""The run report: one self-contained ``report.html`` per results folder.

Everything is read back from the results folder (``summary.json``, ``timeseries.parquet`` or
``timeseries.parts/``, ``events.csv``, ``alarms.csv`` and, where the engine wrote it,
``timing.csv``), so ``gridtwin report RUN_DIR`` rebuilds the same page from the folder alone.
The grid diagram also needs the grid itself: the bundled grid of that name (or the grid file the
scenario names, where it still exists).

Plots are matplotlib figures embedded as base64 PNG: the page opens offline and references no
external URL.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.errors import ConfigError

_log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
TIMING_FILE = "timing.csv"
_DPI = 80
_TOP_BRANCHES = 8
_MAX_SWITCH_LINES = 16
_MAX_TIMELINE_ROWS = 400
_DEFAULT_BAND = (0.95, 1.05)


# --- reading a results folder ------------------------------------------------------------------
@dataclass
class RunData:
    """One results folder, read back."""

    run_dir: Path
    summary: dict[str, Any]
    ts: Any  # pandas.DataFrame, one row per recorded step, ``time_s`` first
    events: Any  # pandas.DataFrame: time_s, kind, message, fields
    alarms: Any  # pandas.DataFrame: time_s, point, field_value, twin_value, tolerance, message
    timing: Any = None  # pandas.DataFrame from timing.csv, or None

    def columns(self, prefix: str) -> list[str]:
        """Time-series columns named ``<prefix>[...]`` (``prefix`` like ``bus.vm_pu``)."""
        p = prefix + "["
        return [c for c in self.ts.columns if c.startswith(p) and c.endswith("]")]

    def matrix(self, prefix: str) -> tuple[list[str], np.ndarray]:
        """Element labels and a (steps x elements) float array of one quantity."""
        cols = self.columns(prefix)
        labels = [c[len(prefix) + 1 : -1] for c in cols]
        if not cols:
            return [], np.zeros((len(self.ts), 0))
        return labels, self.ts[cols].to_numpy(dtype=float)

    @property
    def t(self) -> np.ndarray:
        return self.ts["time_s"].to_numpy(dtype=float)

    @property
    def start_sod(self) -> float:
        """Seconds of day at t = 0 (from summary's ``start``, HH:MM[:SS])."""
        return _parse_clock(str(self.summary.get("start") or "00:00"))


def _parse_clock(text: str) -> float:
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        return 0.0
    while len(parts) < 3:
        parts.append(0.0)
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def is_results_folder(path: Path) -> bool:
    return path.is_dir() and (path / SUMMARY_FILE).is_file()


def load_run(run_dir: Path | str) -> RunData:
    """Read a results folder back.

    Raises:
        ConfigError: the folder is missing or not a results folder (what is missing is named).
    """
    import pandas as pd

    from twin.recorder import ALARM_FIELDS, EVENT_FIELDS, read_timeseries

    d = Path(run_dir)
    if not d.is_dir():
        raise ConfigError(str(d), "results folder", "expected a results folder, found no folder")
    if not (d / SUMMARY_FILE).is_file():
        found = ", ".join(sorted(p.name for p in d.iterdir())[:8]) or "nothing"
        raise ConfigError(
            str(d),
            "results folder",
            f"expected a results folder of `gridtwin run` with {SUMMARY_FILE}, found {found}",
        )
    try:
        summary = json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(d / SUMMARY_FILE), "summary", f"unreadable: {exc}") from None
    try:
        ts = read_timeseries(d)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            str(d), "timeseries", f"expected timeseries.parquet or timeseries.parts/: {exc}"
        ) from None
    if "time_s" not in ts.columns:
        raise ConfigError(str(d), "timeseries", "expected a time_s column, found none")

    def csv(name: str, fields: tuple[str, ...]) -> Any:
        p = d / name
        if not p.is_file():
            return pd.DataFrame({f: [] for f in fields})
        try:
            df = pd.read_csv(p, keep_default_na=False, na_values=[""])
        except (OSError, ValueError, pd.errors.EmptyDataError):
            return pd.DataFrame({f: [] for f in fields})
        for f in fields:
            if f not in df.columns:
                df[f] = np.nan if f != "message" else ""
        return df

    timing = None
    if (d / TIMING_FILE).is_file():
        try:
            timing = pd.read_csv(d / TIMING_FILE)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            timing = None
    return RunData(d, summary, ts, csv("events.csv", EVENT_FIELDS), csv("alarms.csv", ALARM_FIELDS),
                   timing)  # fmt: skip


# --- plotting helpers ---------------------------------------------------------------------------
@contextmanager
def _figure(
    w: float = 10.0,
    h: float = 3.2,
    nrows: int = 1,
    *,
    left: float = 0.75,
    right: float = 0.2,
    bottom: float = 0.55,
    top: float = 0.35,
    **kw: Any,
) -> Iterator[Any]:
    """A figure of ``w`` x ``h`` inches on matplotlib's Agg canvas (no pyplot, no GUI
    backend), with fixed margins in inches: the constrained layout drew every figure twice
    (one pass to measure, one to render), ~45 % of the report's plotting time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    fig.subplots_adjust(left=left / w, right=1.0 - right / w, bottom=bottom / h,
                        top=1.0 - top / h)  # fmt: skip
    ax = fig.subplots(nrows, 1, squeeze=True, **kw)
    try:
        yield fig, ax
    finally:
        fig.clear()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    # zlib level 1, not PIL's 6: a third of the encoding time for ~15 % more bytes
    fig.savefig(buf, format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig: Any, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


class _Clock:
    """Simulated time as hours of day on the x axis, labelled HH:MM."""

    def __init__(self, start_sod: float) -> None:
        self.start = start_sod

    def x(self, t: Any) -> Any:
        return (np.asarray(t, dtype=float) + self.start) / 3600.0

    def label(self, t: float) -> str:
        s = int(round(t + self.start))
        return f"{(s // 3600) % 24:02d}:{(s // 60) % 60:02d}:{s % 60:02d}"

    def axis(self, ax: Any) -> None:
        from matplotlib.ticker import FuncFormatter

        def fmt(h: float, _pos: int) -> str:
            m = int(round(h * 60))
            return f"{(m // 60) % 24:02d}:{m % 60:02d}"

        ax.xaxis.set_major_formatter(FuncFormatter(fmt))
        ax.set_xlabel("simulated time")
        ax.grid(True, alpha=0.3)


_EVENT_SKIP = {"start", "end", "trigger"}


_MAX_EVENT_MARKS = 300


def _mark_events(ax: Any, rd: RunData, clk: _Clock) -> None:
    ev = rd.events
    if not len(ev):
        return
    marked: dict[float, None] = {}
    for t, kind in zip(ev["time_s"], ev["kind"]):
        if str(kind) in _EVENT_SKIP or not math.isfinite(float(t)) or float(t) in marked:
            continue
        marked[float(t)] = None
        if len(marked) >= _MAX_EVENT_MARKS:  # a line per instant; beyond this the plot is grey
            break
    if marked:  # one collection of full-height lines, not one Line2D artist per instant
        ax.vlines(clk.x(list(marked)), 0.0, 1.0, transform=ax.get_xaxis_transform(),
                  colors="tab:purple", alpha=0.35, lw=0.8, linestyles="--")  # fmt: skip


# --- numbers the sections share -----------------------------------------------------------------
def _band(rd: RunData) -> tuple[float, float, str]:
    """The voltage band the run was checked against (the scenario's voltage_band check)."""
    f = rd.summary.get("file")
    if f and not Path(f).is_file():  # a relative path from another folder: a bundled one?
        bundled = Path(__file__).resolve().parent / "library" / Path(f).name
        f = str(bundled) if bundled.is_file() else f
    if f and Path(f).is_file():
        try:
            from scenarios.config import load_scenario

            sc = load_scenario(Path(f))
            for c in sc.checks:
                if c.kind == "voltage_band":
                    lo = float(c.param("min_pu", _DEFAULT_BAND[0]))
                    hi = float(c.param("max_pu", _DEFAULT_BAND[1]))
                    return lo, hi, f"check {c.name}"
        except Exception as exc:  # the scenario file changed since the run: use the default
            _log.debug("no voltage band from %s: %s", f, exc)
    return _DEFAULT_BAND[0], _DEFAULT_BAND[1], "default band (no voltage_band check found)"


def _branches(rd: RunData) -> tuple[list[str], np.ndarray]:
    """Labels ``line L`` / ``trafo T`` and a (steps x branches) loading array in percent."""
    ll, lv = rd.matrix("line.loading_percent")
    tl, tv = rd.matrix("trafo.loading_percent")
    labels = [f"line {x}" for x in ll] + [f"trafo {x}" for x in tl]
    return labels, np.hstack([lv, tv]) if labels else np.zeros((len(rd.ts), 0))


def worst_moment(rd: RunData) -> tuple[int, str]:
    """The recorded step that is worst, and why: largest of |vm - 1| / 0.05 and loading / 100 %.

    Returns (row index into the time series, a one-line reason)."""
    _, vm = rd.matrix("bus.vm_pu")
    _, ld = _branches(rd)
    n = len(rd.ts)
    if n == 0:
        return 0, "no steps recorded"
    with np.errstate(all="ignore"):
        v_score = np.nanmax(np.abs(vm - 1.0), axis=1) / 0.05 if vm.shape[1] else np.zeros(n)
        l_score = np.nanmax(ld, axis=1) / 100.0 if ld.shape[1] else np.zeros(n)
    score = np.fmax(np.nan_to_num(v_score, nan=-1.0), np.nan_to_num(l_score, nan=-1.0))
    k = int(np.argmax(score))
    clk = _Clock(rd.start_sod)
    parts = []
    if vm.shape[1] and np.isfinite(vm[k]).any():
        parts.append(f"bus voltage {np.nanmin(vm[k]):.4f}..{np.nanmax(vm[k]):.4f} pu")
    if ld.shape[1] and np.isfinite(ld[k]).any():
        parts.append(f"max loading {np.nanmax(ld[k]):.1f} %")
    return k, f"{clk.label(float(rd.t[k]))} (t={rd.t[k]:g} s): " + ", ".join(parts)


# --- HTML helpers -------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x))


def _table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join(
        "<tr>" + "".join(c if isinstance(c, _Raw) else f"<td>{_e(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """A table cell already in HTML."""


def _fmt(x: Any, nd: int = 4) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return "-"
    return f"{v:.{nd}g}"


# --- sections -----------------------------------------------------------------------------------
def _section_run(rd: RunData) -> str:
    s = rd.summary
    tm = s.get("timings", {}) or {}
    pace = tm.get("pace", {}) or {}
    ver = s.get("versions", {}) or {}
    be = s.get("backend", {}) or {}
    passed = bool(s.get("passed"))
    verdict = '<span class="pass">PASSED</span>' if passed else '<span class="fail">FAILED</span>'
    rows = [
        ["scenario", s.get("scenario", "?")],
        ["description", s.get("description", "")],
        ["file", s.get("file", "")],
        ["grid", s.get("grid", "?")],
        ["mode", s.get("mode", "?")],
        ["hardware / links", f"{s.get('hardware', '?')} {', '.join(s.get('links') or [])}"],
        ["pace", f"{s.get('pace', '?')} (speed x{_fmt(s.get('speed', 1))})"],
        ["seed", s.get("seed", "")],
        [
            "simulated",
            f"start {s.get('start', '?')}, {_fmt(s.get('duration_s'), 6)} s in steps "
            f"of {_fmt(s.get('step_s'))} s; {s.get('steps')}/{s.get('steps_planned')} "
            "steps run",
        ],  # fmt: skip
        [
            "wall time",
            f"{_fmt(tm.get('wall_s'))} s ({_fmt(tm.get('steps_per_s'))} steps/s); "
            f"field step p50 {_fmt(tm.get('field_step_p50_ms'))} ms, "
            f"p99 {_fmt(tm.get('field_step_p99_ms'))} ms",
        ],  # fmt: skip
        [
            "not converged / stale steps",
            f"{s.get('not_converged_steps', 0)} / {s.get('stale_steps', 0)}",
        ],  # fmt: skip
        ["alarms / deadline misses", f"{s.get('alarms', 0)} / {s.get('deadline_misses', 0)}"],
        ["backend", f"{be.get('backend', '?')} ({be.get('model', '')})"],
        ["versions", ", ".join(f"{k} {v}" for k, v in ver.items())],
    ]
    if pace.get("pace") == "realtime":
        rows.append(
            [
                "realtime lag",
                f"mean {_fmt(pace.get('lag_mean_s', 0) * 1e3)} ms, p95 "
                f"{_fmt(pace.get('lag_p95_s', 0) * 1e3)} ms, max "
                f"{_fmt(pace.get('lag_max_s', 0) * 1e3)} ms",
            ]  # fmt: skip
        )
    if s.get("error"):
        rows.append(["error", s["error"]])
    checks = []
    for c in s.get("checks", []):
        ok = bool(c.get("passed"))
        mark = _Raw('<td class="pass">PASS</td>' if ok else '<td class="fail">FAIL</td>')
        first = c.get("first_failure_s")
        checks.append([c.get("name", ""), c.get("kind", ""), mark, c.get("message", ""),
                       _fmt(c.get("worst")), "" if first is None else _fmt(first, 6),
                       c.get("steps_seen", "")])  # fmt: skip
    return (
        f'<section id="run"><h2>The run: {verdict}</h2>'
        + _table(["", ""], rows, "kv")
        + "<h3>Checks</h3>"
        + _table(
            ["check", "kind", "result", "detail", "worst", "first failure (s)", "steps"],
            checks,
            "checks",
        )  # fmt: skip
        + "</section>"
    )


def _section_voltage(rd: RunData, clk: _Clock) -> str:
    labels, vm = rd.matrix("bus.vm_pu")
    lo, hi, why = _band(rd)
    if not labels:
        return (
            '<section id="voltage"><h2>Voltage band</h2><p>bus.vm_pu was not recorded.</p>'
            "</section>"
        )
    x = clk.x(rd.t)
    with np.errstate(all="ignore"):
        vmin, vmax, vmean = np.nanmin(vm, 1), np.nanmax(vm, 1), np.nanmean(vm, 1)
    with _figure() as (fig, ax):
        ax.fill_between(x, vmin, vmax, color="tab:blue", alpha=0.2, step="post", label="min..max")
        ax.step(x, vmin, where="post", color="tab:blue", lw=1, label="min")
        ax.step(x, vmax, where="post", color="tab:red", lw=1, label="max")
        ax.step(x, vmean, where="post", color="k", lw=1, label="mean")
        ax.axhline(lo, color="tab:orange", ls=":", lw=1.5, label=f"limits {lo:g} / {hi:g} pu")
        ax.axhline(hi, color="tab:orange", ls=":", lw=1.5)
        _mark_events(ax, rd, clk)
        ax.set_ylabel("bus voltage (pu)")
        ax.set_title(f"voltage band over {len(labels)} buses")
        ax.legend(loc="upper left", fontsize=8, ncol=5)
        clk.axis(ax)
        band_img = _img(fig, "voltage band over time")
    i_lo = np.unravel_index(np.nanargmin(vm), vm.shape)
    i_hi = np.unravel_index(np.nanargmax(vm), vm.shape)
    stats = _table(
        ["", "value (pu)", "bus", "time"],
        [
            ["lowest", _fmt(vm[i_lo], 5), labels[i_lo[1]], clk.label(float(rd.t[i_lo[0]]))],
            ["highest", _fmt(vm[i_hi], 5), labels[i_hi[1]], clk.label(float(rd.t[i_hi[0]]))],
            ["limits", f"{lo:g} .. {hi:g}", why, ""],
        ],
    )
    # Heatmap: buses (rows) x time; colours centred on 1 pu, saturating at the band's edges.
    with _figure(10.0, max(3.0, min(9.0, 0.07 * len(labels) + 1.5)), left=0.9) as (fig, ax):
        half = max(abs(hi - 1.0), abs(1.0 - lo))
        extent = (x[0], x[-1] if len(x) > 1 else x[0] + 1e-3, len(labels) - 0.5, -0.5)
        im = ax.imshow(vm.T, aspect="auto", cmap="RdBu_r", vmin=1 - half, vmax=1 + half,
                       interpolation="nearest", extent=extent)  # fmt: skip
        fig.colorbar(im, ax=ax, label="vm (pu)", pad=0.01)
        step = max(1, len(labels) // 30)
        ax.set_yticks(range(0, len(labels), step))
        ax.set_yticklabels(labels[::step], fontsize=6)
        ax.set_title("bus voltage by bus and time")
        clk.axis(ax)
        ax.grid(False)
        heat_img = _img(fig, "bus by time voltage heatmap")
    return (
        '<section id="voltage"><h2>Voltage band</h2>'
        f'<div class="fig">{band_img}</div>{stats}</section>'
        f'<section id="heatmap"><h2>Voltage heatmap</h2><div class="fig">{heat_img}</div>'
        "</section>"
    )


def _section_loading(rd: RunData, clk: _Clock) -> str:
    labels, ld = _branches(rd)
    if not labels:
        return (
            '<section id="loading"><h2>Branch loading</h2><p>no line or trafo '
            "loading_percent was recorded.</p></section>"
        )
    with np.errstate(all="ignore"):
        peak = np.nan_to_num(np.nanmax(ld, axis=0), nan=-1.0)
    order = np.argsort(-peak)[:_TOP_BRANCHES]
    x = clk.x(rd.t)
    with _figure() as (fig, ax):
        for j in order:
            ax.step(x, ld[:, j], where="post", lw=1.2, label=labels[j])
        ax.axhline(100.0, color="tab:red", ls=":", lw=1.5, label="100 %")
        _mark_events(ax, rd, clk)
        ax.set_ylabel("loading (%)")
        ax.set_title(f"the {len(order)} most loaded of {len(labels)} branches")
        ax.legend(loc="upper left", fontsize=7, ncol=3)
        clk.axis(ax)
        img = _img(fig, "branch loading over time")
    rows = []
    for j in order:
        k = int(np.nanargmax(ld[:, j])) if np.isfinite(ld[:, j]).any() else 0
        rows.append([labels[j], _fmt(peak[j], 4), clk.label(float(rd.t[k])),
                     _fmt(np.nanmean(ld[:, j]), 4)])  # fmt: skip
    return (
        '<section id="loading"><h2>Branch loading</h2>'
        f'<div class="fig">{img}</div>'
        + _table(["branch", "peak (%)", "at", "mean (%)"], rows)
        + "</section>"
    )


def _section_switching(rd: RunData, clk: _Clock) -> str:
    sl, sv = rd.matrix("switch.closed")
    tl, tv = rd.matrix("trafo.tap_pos")
    parts = ['<section id="switching"><h2>Switch states and tap positions</h2>']
    x = clk.x(rd.t)
    if sl:
        changed = [j for j in range(len(sl)) if np.unique(sv[np.isfinite(sv[:, j]), j]).size > 1]
        show = changed or []
        nopen = int(np.sum(np.nan_to_num(sv[0]) < 0.5))
        if show:
            show = show[:_MAX_SWITCH_LINES]
            with _figure(10.0, max(2.0, 0.35 * len(show) + 1.0), left=0.9) as (fig, ax):
                for r, j in enumerate(show):
                    ax.fill_between(x, r - 0.35, r + 0.35, where=np.nan_to_num(sv[:, j]) > 0.5,
                                    step="post", color="tab:green", alpha=0.8)  # fmt: skip
                    ax.fill_between(x, r - 0.35, r + 0.35, where=np.nan_to_num(sv[:, j]) <= 0.5,
                                    step="post", color="tab:red", alpha=0.5)  # fmt: skip
                ax.set_yticks(range(len(show)))
                ax.set_yticklabels([sl[j] for j in show], fontsize=7)
                ax.set_title("switches that changed state (green closed, red open)")
                _mark_events(ax, rd, clk)
                clk.axis(ax)
                parts.append(f'<div class="fig">{_img(fig, "switch states over time")}</div>')
        rows: list[list[Any]] = []
        for j in changed:
            col = np.nan_to_num(sv[:, j])
            ks = np.flatnonzero(np.diff(col) != 0) + 1
            for k in ks[:20]:
                rows.append([sl[j], clk.label(float(rd.t[k])),
                             "closed" if col[k] > 0.5 else "open"])  # fmt: skip
        parts.append(
            f"<p>{len(sl)} switches recorded, {nopen} open at the start, {len(changed)} changed "
            "state during the run.</p>"
        )
        if rows:
            parts.append(_table(["switch", "at", "became"], rows))
    else:
        parts.append("<p>switch.closed was not recorded (add it to [record] quantities).</p>")
    if tl:
        with _figure(10.0, 2.6) as (fig, ax):
            for j, lab in enumerate(tl):
                if np.unique(tv[np.isfinite(tv[:, j]), j]).size > 1 or j < 4:
                    ax.step(x, tv[:, j], where="post", lw=1.2, label=lab)
            ax.set_ylabel("tap position")
            ax.set_title("transformer tap positions")
            ax.legend(loc="upper left", fontsize=7, ncol=4)
            _mark_events(ax, rd, clk)
            clk.axis(ax)
            parts.append(f'<div class="fig">{_img(fig, "tap positions over time")}</div>')
        trows: list[list[Any]] = [[lab, _fmt(np.nanmin(tv[:, j])), _fmt(np.nanmax(tv[:, j])),
                 int(np.sum(np.diff(np.nan_to_num(tv[:, j])) != 0))]
                for j, lab in enumerate(tl)]  # fmt: skip
        parts.append(_table(["trafo", "lowest tap", "highest tap", "changes"], trows))
    else:
        parts.append("<p>trafo.tap_pos was not recorded.</p>")
    parts.append("</section>")
    return "".join(parts)


def _section_timeline(rd: RunData, clk: _Clock) -> str:
    ev = rd.events
    rows = []
    for t, kind, msg in zip(ev["time_s"], ev["kind"], ev["message"]):
        tt = float(t) if t == t else math.nan
        lab = clk.label(tt) if math.isfinite(tt) else "?"
        rows.append([lab, _fmt(tt, 6), kind, "" if msg != msg else msg])
    more = ""
    if len(rows) > _MAX_TIMELINE_ROWS:
        more = f"<p>first {_MAX_TIMELINE_ROWS} of {len(rows)} events shown (see events.csv).</p>"
        rows = rows[:_MAX_TIMELINE_ROWS]
    return (
        '<aside id="timeline"><h2>Event timeline</h2>'
        f"<p>{len(ev)} events; dashed purple lines in the plots.</p>"
        + _table(["time", "t (s)", "kind", "message"], rows, "events")
        + more
        + "</aside>"
    )


def _section_alarms(rd: RunData, clk: _Clock) -> str:
    al = rd.alarms
    parts = ['<section id="alarms"><h2>Alarms and divergence</h2>']
    n = len(al)
    parts.append(f"<p>{n} alarms recorded (summary: {rd.summary.get('alarms', 0)}).</p>")
    if n:
        import pandas as pd

        fv = pd.to_numeric(al["field_value"], errors="coerce")
        tw = pd.to_numeric(al["twin_value"], errors="coerce")
        al = al.assign(diff=(fv - tw).abs())
        rows = []
        for point, g in al.groupby("point", sort=True):
            rows.append([point, len(g), clk.label(float(g["time_s"].min())),
                         clk.label(float(g["time_s"].max())), _fmt(g["diff"].max()),
                         _fmt(pd.to_numeric(g["tolerance"], errors="coerce").max())])  # fmt: skip
        parts.append(_table(["point", "alarms", "first", "last", "max |field - twin|",
                             "tolerance"], rows))  # fmt: skip
        with _figure(10.0, 2.8) as (fig, ax):
            for point, g in al.groupby("point", sort=True):
                ax.plot(clk.x(g["time_s"].to_numpy(float)), g["diff"].to_numpy(float), "o",
                        ms=4, label=str(point))  # fmt: skip
            ax.set_ylabel("|field - twin|")
            ax.set_title("divergence per point at each alarm")
            if len(rd.t) > 1:
                ax.set_xlim(clk.x(rd.t[0]), clk.x(rd.t[-1]))
            if al["point"].nunique() <= 12:
                ax.legend(fontsize=7, ncol=4)
            clk.axis(ax)
            parts.append(f'<div class="fig">{_img(fig, "divergence per point")}</div>')
    if "alarms.active" in rd.ts.columns:
        a = rd.ts["alarms.active"].to_numpy(dtype=float)
        if np.nanmax(a, initial=0) > 0:
            with _figure(10.0, 2.0) as (fig, ax):
                ax.step(clk.x(rd.t), a, where="post", color="tab:red")
                ax.set_ylabel("active alarms")
                clk.axis(ax)
                parts.append(f'<div class="fig">{_img(fig, "active alarms over time")}</div>')
    parts.append("</section>")
    return "".join(parts)


def _grid_net(rd: RunData) -> Any:
    """The run's grid: the bundled grid of that name, or the grid file the scenario names."""
    name = str(rd.summary.get("grid", ""))
    import grids

    try:
        return grids.load(name)
    except (KeyError, ValueError, OSError):
        pass
    p = Path(name)
    f = rd.summary.get("file")
    if not p.is_absolute() and f:
        p = Path(f).parent / p
    if p.is_file():
        import pandapower as pp

        return pp.from_json(str(p))
    raise ConfigError(str(rd.run_dir), "grid", f"grid {name!r} is neither bundled nor a file")


def _bus_xy(net: Any) -> tuple[Any, str]:
    """Bus coordinates as a DataFrame (x, y) and where they came from."""
    import pandas as pd

    def parse(g: Any) -> tuple[float, float]:
        if not isinstance(g, str) or not g:
            return (math.nan, math.nan)
        try:
            c = json.loads(g)["coordinates"]
            return (float(c[0]), float(c[1]))
        except (ValueError, KeyError, TypeError, IndexError):
            return (math.nan, math.nan)

    geo = net.bus["geo"] if "geo" in net.bus.columns else pd.Series([None] * len(net.bus))
    xy = pd.DataFrame([parse(g) for g in geo], index=net.bus.index, columns=["x", "y"])
    if xy.notna().all(axis=None) and len(xy):
        return xy, "geodata (WGS84 lon/lat)"
    from pandapower.plotting import create_generic_coordinates

    try:
        create_generic_coordinates(net, library="igraph", overwrite=True)
        how = "generated layout (igraph)"
    except ImportError:
        try:  # networkx through pandapower needs pygraphviz (Graphviz) as well
            create_generic_coordinates(net, library="networkx", overwrite=True)
            how = "generated layout (networkx, graphviz)"
        except ImportError:
            return _spring_xy(net), "generated layout (networkx Kamada-Kawai)"
    return pd.DataFrame([parse(g) for g in net.bus["geo"]], index=net.bus.index,
                        columns=["x", "y"]), how  # fmt: skip


def _spring_xy(net: Any) -> Any:
    """A deterministic networkx layout of the bus graph (no Graphviz needed)."""
    import networkx as nx
    import pandas as pd
    from pandapower.topology import create_nxgraph

    g = nx.Graph(create_nxgraph(net, respect_switches=False, include_out_of_service=True))
    g.add_nodes_from(net.bus.index)
    pos = nx.kamada_kawai_layout(g, weight=None) if len(g) > 1 else {n: (0.0, 0.0) for n in g}
    return pd.DataFrame([pos[b] for b in net.bus.index], index=net.bus.index,
                        columns=["x", "y"])  # fmt: skip


def _section_diagram(rd: RunData, clk: _Clock) -> str:
    import matplotlib as mpl

    head = '<section id="diagram"><h2>Grid diagram at the worst moment</h2>'
    k, why = worst_moment(rd)
    try:
        net = _grid_net(rd)
    except Exception as exc:
        return head + f"<p>no grid to draw: {_e(exc)}</p></section>"
    from scenarios.profiles import element_labels

    xy, how = _bus_xy(net)
    row = rd.ts.iloc[k]
    lo, hi, _ = _band(rd)

    def values(table: str, column: str) -> np.ndarray:
        labs = element_labels(net, table) if table in net and len(net[table]) else {}
        out = np.full(len(net[table]), np.nan)
        pos = {idx: i for i, idx in enumerate(net[table].index)}
        for lab, idx in labs.items():
            v = row.get(f"{table}.{column}[{lab}]")
            if v is not None and idx in pos:
                out[pos[idx]] = float(v)
        return out

    vm = values("bus", "vm_pu")
    ld = values("line", "loading_percent")
    closed = values("switch", "closed") if "switch" in net else np.zeros(0)
    with _figure(9.0, 8.0, left=0.7, right=0.75, bottom=0.6) as (fig, ax):
        from matplotlib.collections import LineCollection

        fb, tb = net.line.from_bus.to_numpy(), net.line.to_bus.to_numpy()
        segs = [[(xy.at[a, "x"], xy.at[a, "y"]), (xy.at[b, "x"], xy.at[b, "y"])]
                for a, b in zip(fb, tb)]  # fmt: skip
        # An open line switch or an out-of-service line: dashed grey.
        off = np.zeros(len(net.line), dtype=bool)
        if len(closed) and np.isfinite(closed).any():
            sw = net.switch
            for c, (et, el) in zip(closed, zip(sw.et, sw.element)):
                if et == "l" and math.isfinite(c) and c < 0.5:
                    off[net.line.index.get_loc(el)] = True
        lnorm = mpl.colors.Normalize(0.0, max(100.0, float(np.nanmax(ld, initial=0.0))))
        lc = LineCollection([s for s, o in zip(segs, off) if not o], cmap="viridis", norm=lnorm,
                            linewidths=2.2)  # fmt: skip
        lc.set_array(np.nan_to_num(ld[~off], nan=0.0))
        ax.add_collection(lc)
        ax.add_collection(LineCollection([s for s, o in zip(segs, off) if o], colors="0.6",
                                         linestyles="--", linewidths=1.2))  # fmt: skip
        tsegs = [[(xy.at[a, "x"], xy.at[a, "y"]), (xy.at[b, "x"], xy.at[b, "y"])]
                 for a, b in zip(net.trafo.hv_bus, net.trafo.lv_bus)]  # fmt: skip
        ax.add_collection(LineCollection(tsegs, colors="k", linewidths=3.0))
        half = max(abs(hi - 1.0), abs(1.0 - lo))
        sc = ax.scatter(xy["x"], xy["y"], c=vm, cmap="RdBu_r", vmin=1 - half, vmax=1 + half,
                        s=28, edgecolors="k", linewidths=0.4, zorder=3)  # fmt: skip
        eg = net.ext_grid.bus.to_numpy()
        ax.scatter(xy.loc[eg, "x"], xy.loc[eg, "y"], marker="s", s=120, facecolors="none",
                   edgecolors="k", linewidths=1.5, zorder=4, label="ext grid")  # fmt: skip
        fig.colorbar(sc, ax=ax, label="bus voltage (pu)", fraction=0.035, pad=0.02,
                     location="right")  # fmt: skip
        fig.colorbar(lc, ax=ax, label="line loading (%)", fraction=0.035, pad=0.08,
                     location="bottom")  # fmt: skip
        if how.startswith("geodata"):
            ax.set_aspect(1.0 / math.cos(math.radians(float(xy["y"].mean()))))
            ax.set_xlabel("longitude")
            ax.set_ylabel("latitude")
        else:
            ax.set_aspect("equal")
            ax.set_axis_off()
        ax.autoscale_view()
        ax.set_title(f"{rd.summary.get('grid', '')} at {clk.label(float(rd.t[k]))}")
        ax.legend(loc="lower right", fontsize=7)
        img = _img(fig, "grid diagram at the worst moment")
    return (
        head + f"<p>worst moment: {_e(why)}. Layout: {_e(how)}. Open lines dashed grey, "
        "transformers black.</p>"
        f'<div class="fig">{img}</div></section>'
    )


def _phase_histograms(tdf: Any, cols: list[str]) -> str:
    """Per-step durations of every phase as one figure: a row per phase (its histogram, bar
    height the share of that phase's busiest bin), one log-scaled time axis for all, so the
    phases compare at a glance. One axes, not one per phase: each axes' ticks and labels were
    most of this section's time (nine axes ~0.2 s of every city_day report)."""
    from matplotlib.ticker import NullLocator

    series = []
    for c in cols:
        v = tdf[c].to_numpy(float)
        series.append((c[:-3], v[np.isfinite(v)]))
    positive = np.concatenate([v[v > 0] for _, v in series])
    floor = float(positive.min()) if positive.size else 1e-3  # a log axis: 0 ms sits here
    top = max(float(max(v.max() for _, v in series)), floor * 10.0)
    edges = np.geomspace(floor, top * 1.0001, 61)
    n = len(series)
    with _figure(10.0, 0.42 * n + 1.0, left=2.9, right=0.3, bottom=0.5, top=0.3) as (fig, ax):
        for r, (_, v) in enumerate(series):
            cnt, _ = np.histogram(np.clip(v, floor, None), bins=edges)
            y0 = n - 1 - r  # the first phase on top
            ax.stairs(y0 + 0.85 * cnt / max(int(cnt.max()), 1), edges, baseline=y0, fill=True,
                      color="tab:blue", alpha=0.85)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(edges[0], edges[-1])
        ax.set_ylim(-0.15, n)
        ax.set_yticks(range(n))
        ax.set_yticklabels(
            [f"{name}: p50 {np.median(v):.3g} ms, max {v.max():.3g} ms"
             for name, v in reversed(series)],
            fontsize=8,
        )  # fmt: skip
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("duration per step (ms, log scale)", fontsize=8)
        ax.set_title("per-step histograms, one row per phase", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        return _img(fig, "per-phase step time histograms")


def _section_timing(rd: RunData, clk: _Clock) -> str:
    s = rd.summary
    tm = s.get("timings", {}) or {}
    pace = tm.get("pace", {}) or {}
    parts = ['<section id="timing"><h2>Step timing</h2>']
    parts.append(
        f"<p>{s.get('steps', 0)} steps in {_fmt(tm.get('run_s'))} s "
        f"({_fmt(tm.get('steps_per_s'))} steps/s), pace {_e(s.get('pace', '?'))}; deadline "
        f"misses: {s.get('deadline_misses', 0)}.</p>"
    )
    phases = ((s.get("field") or {}).get("sync") or {}).get("phases") or {}
    if phases:
        rows = [[ph, d.get("n", ""), _fmt(d.get("p50_ms")), _fmt(d.get("p99_ms")),
                 _fmt(d.get("max_ms")), _fmt(d.get("mean_ms"))]
                for ph, d in phases.items()]  # fmt: skip
        parts.append(_table(["phase", "n", "p50 (ms)", "p99 (ms)", "max (ms)", "mean (ms)"], rows))
    tdf = rd.timing
    if tdf is not None and len(tdf):
        cols = [c for c in tdf.columns if c.endswith("_ms") and c != "late_ms"]
        cols = [c for c in cols if np.isfinite(tdf[c].to_numpy(float)).any()]
        if cols:
            parts.append(f'<div class="fig">{_phase_histograms(tdf, cols)}</div>')
        late = tdf["late_ms"].to_numpy(float) if "late_ms" in tdf.columns else np.zeros(0)
        if pace.get("pace") == "realtime" and np.isfinite(late).any():
            with _figure(10.0, 2.4) as (fig, ax):
                tt = tdf["time_s"].to_numpy(float)
                ax.step(clk.x(tt), late, where="post", color="tab:red")
                ax.set_ylabel("late (ms)")
                ax.set_title("realtime lag: wall time past the next step's due time")
                clk.axis(ax)
                parts.append(f'<div class="fig">{_img(fig, "realtime lag")}</div>')
    else:
        parts.append("<p>no timing.csv in this results folder: no per-step histograms.</p>")
    if pace.get("pace") == "realtime":
        parts.append(
            f"<p>realtime x{_fmt(pace.get('speed'))}: lag mean "
            f"{_fmt(pace.get('lag_mean_s', 0) * 1e3)} ms, p95 "
            f"{_fmt(pace.get('lag_p95_s', 0) * 1e3)} ms, max "
            f"{_fmt(pace.get('lag_max_s', 0) * 1e3)} ms.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:10px 20px}
header h1{margin:0;font-size:1.3em}
.layout{display:grid;grid-template-columns:minmax(0,1fr) 30em;gap:16px;padding:12px 20px}
main section{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 14px;
margin-bottom:14px}
aside{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 12px;position:sticky;
top:8px;max-height:calc(100vh - 30px);overflow:auto;align-self:start}
h2{font-size:1.1em;margin:6px 0}h3{font-size:1em}
table{border-collapse:collapse;font-size:0.85em;margin:6px 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eef}.pass{color:#0a0;font-weight:bold}.fail{color:#c00;font-weight:bold}
.fig img{max-width:100%;height:auto}
table.events td{font-size:0.9em}
nav a{color:#cde;margin-right:12px}
@media (max-width:1100px){.layout{grid-template-columns:1fr}aside{position:static;max-height:none}}
"""


def _one_section(fn: Any, rd: RunData, clk: _Clock) -> str:
    try:
        return str(fn(rd) if fn is _section_run else fn(rd, clk))
    except Exception as exc:  # one broken section must not take the whole report down
        _log.warning("report section %s failed", fn.__name__, exc_info=True)
        return (
            f'<section class="error"><h2>{_e(fn.__name__[9:])}</h2><p>this section could not '
            f"be drawn: {_e(type(exc).__name__)}: {_e(exc)}</p></section>"
        )


#: Sections drawn in a forked child beside the parent's (about half of city_day's drawing).
_CHILD_SECTIONS = ("_section_loading", "_section_diagram", "_section_timing")
#: How long the parent waits for the child's sections before drawing them itself (s).
_CHILD_TIMEOUT_S = 120.0


def report_jobs() -> int:
    """Processes that draw the report: ``GRIDTWIN_REPORT_JOBS=2`` forks a child that draws
    :data:`_CHILD_SECTIONS` on a second core (where ``os.fork`` exists); the default, 1, draws
    everything in this process. Not the default: measured only on a busy machine (load 5-8),
    where the child's copy-on-write faults cost ~0.4 s of CPU and the wall time did not drop."""
    import os

    env = os.environ.get("GRIDTWIN_REPORT_JOBS", "").strip()
    if not env:
        return 1
    try:
        jobs = max(1, min(2, int(env)))
    except ValueError:
        _log.warning("GRIDTWIN_REPORT_JOBS: expected 1 or 2, found %r: using 1", env)
        return 1
    return jobs if hasattr(os, "fork") else 1


def _sections(rd: RunData, clk: _Clock) -> list[str]:
    fns = (_section_run, _section_voltage, _section_loading, _section_switching,
           _section_alarms, _section_diagram, _section_timing)  # fmt: skip
    if report_jobs() > 1:
        got = _sections_forked(rd, clk, fns)
        if got is not None:
            return got
    return [_one_section(fn, rd, clk) for fn in fns]


def _sections_forked(rd: RunData, clk: _Clock, fns: tuple[Any, ...]) -> list[str] | None:
    """The sections with :data:`_CHILD_SECTIONS` drawn by a forked child on the second core
    while this process draws the rest (the same page as drawn alone). The child inherits the
    loaded data and matplotlib, sends its HTML through a pipe and ends with ``os._exit``. A
    child that fails, dies or is late is not waited for: its sections are drawn here. None:
    no child could be started."""
    import os
    import pickle

    child_fns = [fn for fn in fns if fn.__name__ in _CHILD_SECTIONS]
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(r)
        os.close(w)
        _log.debug("report: no child process (%s): drawing alone", exc)
        return None
    if pid == 0:  # the child: draw, send, end (no clean-up of the parent's state)
        code = 1
        try:
            os.close(r)
            data = pickle.dumps([_one_section(fn, rd, clk) for fn in child_fns])
            with os.fdopen(w, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    theirs: list[str] | None = None
    try:
        mine = {fn.__name__: _one_section(fn, rd, clk) for fn in fns if fn not in child_fns}
        theirs = _read_child(r, pid, len(child_fns))
    finally:  # interrupted, or the child failed or is late: it is killed, then collected
        os.close(r)
        _reap(pid, kill=theirs is None)
    if theirs is None:
        _log.warning("report: the drawing child process failed: drawing its sections here")
        theirs = [_one_section(fn, rd, clk) for fn in child_fns]
    mine.update({fn.__name__: text for fn, text in zip(child_fns, theirs)})
    return [mine[fn.__name__] for fn in fns]


def _read_child(fd: int, pid: int, n: int) -> list[str] | None:
    """The child's sections from the pipe (None: it failed, sent garbage or is too late)."""
    import os
    import pickle
    import select

    chunks: list[bytes] = []
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        return None
    try:
        got = pickle.loads(b"".join(chunks))  # our own child's bytes
    except Exception:  # noqa: BLE001 - a truncated message: draw here
        return None
    if not (isinstance(got, list) and len(got) == n and all(isinstance(x, str) for x in got)):
        return None
    return got


def _reap(pid: int, *, kill: bool) -> None:
    """Collect the child (killed first when the parent gave up on it or was interrupted)."""
    import os
    import signal

    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:  # already collected by _read_child
        pass
    except OSError as exc:
        _log.debug("report: child %d: %s", pid, exc)


def build_report(run_dir: Path | str) -> str:
    """The report page of one results folder as an HTML string (see the module docstring).

    Raises:
        ConfigError: not a results folder.
    """
    rd = load_run(run_dir)
    clk = _Clock(rd.start_sod)
    import matplotlib

    # titles at a fixed height above the axes: matplotlib's automatic title position measures
    # every tick label of the axes first (~10 % of the drawing time); no axes here has tick
    # labels above it
    with matplotlib.rc_context({"axes.titley": 1.0}):
        sections = _sections(rd, clk)
    timeline = _section_timeline(rd, clk)
    s = rd.summary
    title = f"gridtwin report: {s.get('scenario', rd.run_dir.name)}"
    nav = "".join(
        f'<a href="#{a}">{b}</a>'
        for a, b in (("run", "run"), ("voltage", "voltage"), ("heatmap", "heatmap"),
                     ("loading", "loading"), ("switching", "switching"), ("alarms", "alarms"),
                     ("diagram", "diagram"), ("timing", "timing"), ("timeline", "events"))
    )  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><nav>{nav}</nav></header>"
        f'<div class="layout"><main>{"".join(sections)}</main>{timeline}</div>'
        "</body></html>\n"
    )


def write_report(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` into the results folder (or to ``out``); returns its path."""
    t0 = time.perf_counter()
    text = build_report(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    _log.info("wrote %s (%d bytes) in %.2f s", path, len(text), time.perf_counter() - t0)
    return path
