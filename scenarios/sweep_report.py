"""The sweep report: one self-contained ``report.html`` per sweep output folder.

Read back from the folder alone (``sweep.json``, ``results.parquet`` or, for a sweep that
stopped before gathering, ``chunks/*.parquet``, and ``summary.json`` where it exists):

- the sweep: scenario, run kind, cases planned / finished, passed / failed / errors, rate;
- the ranking of the worst cases (the order of ``summary.json``: cases that raised, then failed
  checks, then highest loading, then lowest voltage);
- the spread of worst voltage and worst loading over the cases (histograms, and box plots per
  value of each grid parameter);
- pass / fail counts per check;
- the failed cases with their errors;
- relative links to the kept case run folders (``--keep-runs``).

Plots are matplotlib PNGs embedded as base64 (the helpers of scenarios.report): the page opens
offline, runs no script and references no external URL.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.report import _CSS, _e, _fmt, _img, _Raw, _table
from twin.errors import ConfigError

_log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PLAN_FILE = "sweep.json"
RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.json"
CHUNKS_DIR = "chunks"
_TOP = 25
_MAX_FAILED = 200
_MAX_RUN_LINKS = 500


@contextmanager
def _figure(w: float, h: float, ncols: int = 1) -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, ncols, figsize=(w, h), squeeze=True, layout="constrained")
    try:
        yield fig, ax
    finally:
        plt.close(fig)


def is_sweep_folder(path: Path) -> bool:
    """A folder ``gridtwin sweep`` wrote (its ``sweep.json`` plan is there)."""
    return path.is_dir() and (path / PLAN_FILE).is_file()


def load_sweep_results(out_dir: Path | str) -> tuple[dict[str, Any], Any, dict[str, Any], bool]:
    """(plan, results table, summary, complete) of a sweep folder.

    ``complete`` is False when ``results.parquet`` is missing (a sweep stopped before it
    gathered): the table is then joined from the chunk files, the summary may be missing.

    Raises:
        ConfigError: not a sweep folder, or no results in it yet.
    """
    import pandas as pd

    d = Path(out_dir)
    if not is_sweep_folder(d):
        raise ConfigError(str(d), "sweep folder", f"expected a sweep folder with {PLAN_FILE}")
    try:
        plan = json.loads((d / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(d / PLAN_FILE), "sweep plan", f"unreadable: {exc}") from None
    summary: dict[str, Any] = {}
    if (d / SUMMARY_FILE).is_file():
        try:
            summary = json.loads((d / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
    complete = (d / RESULTS_FILE).is_file()
    if complete:
        df = pd.read_parquet(d / RESULTS_FILE)
    else:
        files = sorted((d / CHUNKS_DIR).glob("chunk-*.parquet"))
        if not files:
            raise ConfigError(
                str(d),
                "sweep folder",
                f"expected {RESULTS_FILE} or {CHUNKS_DIR}/chunk-*.parquet, found no results "
                "(no case has finished yet)",
            )
        df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        df = df.drop_duplicates("case", keep="last").sort_values("case").reset_index(drop=True)
        summary = {}
    return plan, _normalised(df), summary, complete


def _normalised(df: Any) -> Any:
    """The columns the report reads, present whatever the run kind (as gather() makes them)."""
    for col in ("error", "outage", "worst_vm_pu", "max_vm_pu", "worst_loading_percent"):
        if col not in df.columns:
            df[col] = "" if col in ("error", "outage") else np.nan
    df["error"] = df["error"].fillna("").astype(str)
    df["outage"] = df["outage"].fillna("").astype(str)
    checks = [c for c in df.columns if c.startswith("check.")]
    if "failed_checks" not in df.columns:
        fails = (
            (df[checks].astype("boolean").fillna(False) == False).sum(axis=1)  # noqa: E712
            if checks
            else 0
        )
        df["failed_checks"] = np.where(df["error"] != "", len(checks), fails).astype(int)
    if "passed" not in df.columns:
        df["passed"] = (df["error"] == "") & (df["failed_checks"] == 0)
    return df


def _ranking(df: Any, top: int) -> Any:
    key = df.assign(
        _l=df["worst_loading_percent"].astype(float).fillna(-np.inf),
        _v=df["worst_vm_pu"].astype(float).fillna(np.inf),
        _e=df["error"] != "",
    )
    key = key.sort_values(
        ["_e", "failed_checks", "_l", "_v"], ascending=[False, False, False, True], kind="stable"
    )
    return key.drop(columns=["_l", "_v", "_e"]).head(top)


def _params(df: Any) -> list[str]:
    return [c for c in df.columns if c.startswith("param.")]


def _what(r: dict[str, Any], params: list[str]) -> str:
    parts = [str(r["outage"])] if r.get("outage") else []
    seed = r.get("seed")
    if seed is not None and not (isinstance(seed, float) and math.isnan(seed)) and seed >= 0:
        parts.append(f"seed {int(seed)}")
    parts += [f"{p[6:]}={_fmt(r[p])}" for p in params if r.get(p) is not None]
    return ", ".join(parts) or "the scenario as written"


def _run_link(r: dict[str, Any], base: Path) -> Any:
    """A relative link to a kept case run folder (its report.html where one was written)."""
    rd = r.get("run_dir")
    if not isinstance(rd, str) or not rd:
        return ""
    target = Path(rd)
    if (target / REPORT_FILE).is_file():
        target = target / REPORT_FILE
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(rd).name
    href = Path(rel).as_posix() + ("/" if target.is_dir() or not target.exists() else "")
    return _Raw(f'<td><a href="{_e(href)}">{_e(Path(rd).name)}</a></td>')


def _has_runs(df: Any) -> bool:
    return "run_dir" in df.columns and bool(df["run_dir"].notna().any())


def _cell_v(r: dict[str, Any]) -> str:
    v = r.get("worst_vm_pu")
    return "-" if v is None or _fmt(v) == "-" else f"{_fmt(v)} {r.get('worst_vm_bus') or ''}"


def _cell_l(r: dict[str, Any]) -> str:
    v = r.get("worst_loading_percent")
    if v is None or _fmt(v) == "-":
        return "-"
    return f"{float(v):.1f} {r.get('worst_loading_element') or ''}"


# --- sections -----------------------------------------------------------------------------------
def _section_sweep(plan: dict, df: Any, summary: dict, complete: bool) -> str:
    planned = int(plan.get("cases") or summary.get("cases") or len(df))
    errors = int((df["error"] != "").sum())
    passed = int(df["passed"].sum())
    rows = [
        ["scenario", plan.get("scenario") or summary.get("scenario") or "?"],
        ["run", plan.get("run") or summary.get("run") or "?"],
        ["cases", f"{len(df)} finished of {planned} planned"],
        ["passed", passed],
        ["failed", len(df) - passed],
        ["raised an error", errors],
    ]
    if summary.get("wall_s"):
        rows.append(["wall time", f"{summary['wall_s']:.1f} s ({summary.get('cases_per_s')}/s)"])
    if summary.get("resumed_skipped"):
        rows.append(["resumed", f"{summary['resumed_skipped']} cases were done before"])
    note = ""
    if not complete:
        note = (
            '<p class="fail">This sweep has not gathered its results (results.parquet is '
            "missing): the page shows the finished chunks. Run the same `gridtwin sweep` command "
            "again to finish and gather it.</p>"
        )
    verdict = (
        '<p class="pass">every case passed</p>'
        if passed == len(df) == planned
        else f'<p class="fail">{len(df) - passed} case(s) failed, {planned - len(df)} not run</p>'
    )
    return (
        '<section id="sweep"><h2>Sweep</h2>'
        + verdict
        + note
        + _table(["", ""], [[a, b] for a, b in rows])
        + "</section>"
    )


def _section_ranking(df: Any, base: Path) -> str:
    params = _params(df)
    top = _ranking(df, _TOP)
    rows = []
    for i, r in enumerate(top.to_dict("records"), start=1):
        status = _Raw('<td class="pass">pass</td>' if r["passed"] else '<td class="fail">fail</td>')
        rows.append(
            [
                i,
                r["case"],
                _what(r, params),
                _cell_v(r),
                _cell_l(r),
                int(r["failed_checks"]),
                status,
                (r["error"] or "")[:160],
                _run_link(r, base),
            ]
        )
    head = ["rank", "case", "case is", "worst V pu (bus)", "worst loading % (element)",
            "failed checks", "", "error", "run folder"]  # fmt: skip
    if not _has_runs(df):  # no --keep-runs: no empty column
        head, rows = head[:-1], [r[:-1] for r in rows]
    return (
        '<section id="ranking"><h2>Worst cases</h2><p>Cases that raised first, then by failed '
        f"checks, highest loading, lowest voltage; the first {len(top)} of {len(df)}.</p>"
        + _table(head, rows, "ranking")
        + "</section>"
    )


def _finite(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def _section_spread(df: Any) -> str:
    metrics = [("worst_vm_pu", "worst (lowest) voltage, pu"),
               ("worst_loading_percent", "worst (highest) loading, %")]  # fmt: skip
    parts = ['<section id="spread"><h2>Spread over the cases</h2>']
    stats = []
    for col, label in metrics:
        a = _finite(df[col])
        if a.size:
            q = np.percentile(a, [0, 5, 50, 95, 100])
            stats.append([label, a.size, *(_fmt(v) for v in q)])
        else:
            stats.append([label, 0, "-", "-", "-", "-", "-"])
    parts.append(_table(["quantity", "cases with a value", "min", "p5", "p50", "p95", "max"],
                        stats))  # fmt: skip
    with _figure(10.0, 3.0, ncols=2) as (fig, axes):
        for ax, (col, label) in zip(axes, metrics):
            a = _finite(df[col])
            if a.size:
                ax.hist(a, bins=min(40, max(5, int(math.sqrt(a.size)) + 1)), color="#4a78a8")
            else:
                ax.text(0.5, 0.5, "no value", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            ax.set_ylabel("cases")
        parts.append(
            f'<div class="fig">{_img(fig, "histograms of worst voltage and loading")}</div>'
        )
    for p in _params(df):
        values = sorted(v for v in df[p].dropna().unique())
        if len(values) < 2 or len(values) > 30:
            continue
        with _figure(10.0, 3.0, ncols=2) as (fig, axes):
            for ax, (col, label) in zip(axes, metrics):
                data = [_finite(df.loc[df[p] == v, col]) for v in values]
                keep = [(v, d) for v, d in zip(values, data) if d.size]
                if keep:
                    ax.boxplot([d for _, d in keep], tick_labels=[_fmt(v) for v, _ in keep])
                ax.set_xlabel(p[6:])
                ax.set_ylabel(label)
            parts.append(f"<h3>by {_e(p[6:])}</h3>")
            parts.append(f'<div class="fig">{_img(fig, f"box plots by {p[6:]}")}</div>')
    if not _params(df):
        with _figure(10.0, 2.6, ncols=2) as (fig, axes):
            for ax, (col, label) in zip(axes, metrics):
                a = _finite(df[col])
                if a.size:
                    ax.boxplot([a], orientation="horizontal", tick_labels=["all cases"])
                ax.set_xlabel(label)
            parts.append(f'<div class="fig">{_img(fig, "box plots over all cases")}</div>')
    parts.append("</section>")
    return "".join(parts)


def _section_checks(df: Any) -> str:
    checks = [c for c in df.columns if c.startswith("check.")]
    if not checks:
        return (
            '<section id="checks"><h2>Checks</h2><p>No check results (no case finished a '
            "check).</p></section>"
        )
    rows = []
    counts = []
    for c in checks:
        s = df[c].astype("boolean")
        p, f = int((s == True).sum()), int((s == False).sum())  # noqa: E712
        n = int(s.isna().sum())
        counts.append((c[6:], p, f, n))
        cls = "pass" if f == 0 and n == 0 else "fail"
        rows.append(
            [c[6:], p, f, n, _Raw(f'<td class="{cls}">{"pass" if cls == "pass" else "fail"}</td>')]
        )
    parts = ['<section id="checks"><h2>Checks</h2>',
             _table(["check", "passed", "failed", "no result (error)", ""], rows)]  # fmt: skip
    with _figure(10.0, 0.5 + 0.35 * len(counts)) as (fig, ax):
        y = np.arange(len(counts))
        ps = np.array([c[1] for c in counts])
        fs = np.array([c[2] for c in counts])
        ns = np.array([c[3] for c in counts])
        ax.barh(y, ps, color="#3a3", label="passed")
        ax.barh(y, fs, left=ps, color="#c33", label="failed")
        ax.barh(y, ns, left=ps + fs, color="#999", label="no result")
        ax.set_yticks(y, [c[0] for c in counts])
        ax.invert_yaxis()
        ax.set_xlabel("cases")
        ax.legend(loc="lower right", fontsize="small")
        parts.append(f'<div class="fig">{_img(fig, "pass and fail counts per check")}</div>')
    parts.append("</section>")
    return "".join(parts)


def _section_failed(df: Any, base: Path) -> str:
    params = _params(df)
    checks = [c for c in df.columns if c.startswith("check.")]
    bad = df[~df["passed"].astype(bool)]
    if not len(bad):
        return '<section id="failed"><h2>Failed cases</h2><p>None.</p></section>'
    rows = []
    width = 5 if _has_runs(df) else 4
    for r in bad.head(_MAX_FAILED).to_dict("records"):
        failed = [c[6:] for c in checks if r.get(c) is False or r.get(c) == 0]
        rows.append([r["case"], _what(r, params), ", ".join(failed) or "-",
                     r["error"] or "-", _run_link(r, base)][:width])  # fmt: skip
    more = (
        f"<p>... and {len(bad) - _MAX_FAILED} more in results.parquet.</p>"
        if len(bad) > _MAX_FAILED
        else ""
    )
    return (
        f'<section id="failed"><h2>Failed cases ({len(bad)})</h2>'
        + _table(
            ["case", "case is", "failed checks", "error", "run folder"][: len(rows[0])],
            rows,
            "events",
        )  # fmt: skip
        + more
        + "</section>"
    )


def _section_runs(df: Any, base: Path) -> str:
    if not _has_runs(df):
        return ""
    params = _params(df)
    kept = df[df["run_dir"].notna()].head(_MAX_RUN_LINKS)
    rows = [[r["case"], _what(r, params), _run_link(r, base)] for r in kept.to_dict("records")]
    return (
        '<section id="runs"><h2>Kept case runs</h2><p>Each case\'s own results folder '
        "(`gridtwin report FOLDER` builds its report).</p>"
        + _table(["case", "case is", "run folder"], rows)
        + "</section>"
    )


def build_sweep_report(out_dir: Path | str, base: Path | None = None) -> str:
    """The report page of a sweep folder as an HTML string; links are relative to ``base``
    (default: the folder itself, where report.html goes).

    Raises:
        ConfigError: not a sweep folder, or no results yet.
    """
    d = Path(out_dir)
    plan, df, summary, complete = load_sweep_results(d)
    base = (base or d).resolve()
    sections = [_section_sweep(plan, df, summary, complete)]
    parts: list[tuple[str, Callable[[], str]]] = [
        ("ranking", lambda: _section_ranking(df, base)),
        ("spread", lambda: _section_spread(df)),
        ("checks", lambda: _section_checks(df)),
        ("failed", lambda: _section_failed(df, base)),
        ("runs", lambda: _section_runs(df, base)),
    ]
    for name, fn in parts:
        try:
            sections.append(fn())
        except Exception as exc:  # one broken section must not take the whole report down
            _log.warning("sweep report section %s failed", name, exc_info=True)
            sections.append(
                f'<section class="error"><h2>{_e(name)}</h2><p>this section could '
                f"not be drawn: {_e(type(exc).__name__)}: {_e(exc)}</p></section>"
            )
    title = f"gridtwin sweep report: {plan.get('scenario') or d.name}"
    nav = "".join(
        f'<a href="#{a}">{a}</a>' for a in ("sweep", "ranking", "spread", "checks", "failed")
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><nav>{nav}</nav></header>"
        f'<div class="layout" style="display:block"><main>{"".join(sections)}</main></div>'
        "</body></html>\n"
    )


def write_sweep_report(out_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write ``report.html`` into the sweep folder (or to ``out``); returns its path."""
    t0 = time.perf_counter()
    path = Path(out) if out is not None else Path(out_dir) / REPORT_FILE
    text = build_sweep_report(out_dir, base=path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    _log.info("wrote %s (%d bytes) in %.2f s", path, len(text), time.perf_counter() - t0)
    return path


__all__ = ["build_sweep_report", "is_sweep_folder", "load_sweep_results", "write_sweep_report"]
