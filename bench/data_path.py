"""The point store's data path (issue 15): a micro-benchmark and an exact results comparison.

    python bench/data_path.py [--points 1000] [--repeat 200]
    python bench/data_path.py --compare RESULTS_A RESULTS_B

The benchmark times, on a generated map of ``--points`` points, one write of every point and
one read of every point through the per-point API (``set`` / ``get``), the per-point bulk API
(``set_many``), the reference path (``PointStore(bulk=False)``) and the array path
(``set_array`` with positions resolved once / the ``values`` array), with and without a
per-point listener. It prints microseconds per 1,000 points and the load average (the machine
is shared: quote numbers with it).

``--compare`` says whether two results folders of the same scenario hold the same run:
time series (every column, NaN-safe, bit for bit), events, alarms, audit records (without
their wall-clock time and peer port), check results and the summary's counts. Exit code 0:
the same; 1: the first differences are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_PORT = re.compile(r"(127\.0\.0\.1|localhost|\[::1\]):\d+")
#: summary keys that depend on the wall clock or the machine, not on the run
_SUMMARY_SKIP = frozenset(
    {"timing", "timings", "wall_s", "file", "backend", "versions", "started", "out_dir"}
)


def _csv_rows(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [_PORT.sub(r"\1:PORT", line) for line in path.read_text().splitlines()]


def _audit_rows(path: Path) -> list[str]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        d = json.loads(line)
        d.pop("time", None)
        d.pop("peer", None)
        rows.append(_PORT.sub(r"\1:PORT", json.dumps(d, sort_keys=True)))
    return rows


def _untimed(v: Any) -> Any:
    """``v`` without wall-clock timings (keys ending in ``_ms``: step and phase times)."""
    if isinstance(v, dict):
        return {k: _untimed(x) for k, x in v.items() if not str(k).endswith("_ms")}
    if isinstance(v, list):
        return [_untimed(x) for x in v]
    return v


def _summary(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    d = json.loads(path.read_text())
    out = {}
    for k, v in d.items():
        if k in _SUMMARY_SKIP:
            continue
        out[k] = _untimed(json.loads(_PORT.sub(r"\1:PORT", json.dumps(v, sort_keys=True))))
    return out


def _junit(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        verdict = "pass"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                verdict = child.tag
        out.append((case.get("name", ""), verdict))
    return out


def compare_folders(a: Path | str, b: Path | str, *, limit: int = 10) -> list[str]:
    """Differences between two results folders of one scenario (empty: the same run)."""
    import pandas as pd

    a, b = Path(a), Path(b)
    diffs: list[str] = []
    ta, tb = a / "timeseries.parquet", b / "timeseries.parquet"
    if ta.is_file() != tb.is_file():
        diffs.append(f"timeseries.parquet in one folder only ({ta.is_file()}, {tb.is_file()})")
    elif ta.is_file():
        da, db = pd.read_parquet(ta), pd.read_parquet(tb)
        if list(da.columns) != list(db.columns):
            only = sorted(set(da.columns) ^ set(db.columns))
            diffs.append(f"timeseries columns differ: {only[:limit]}")
        elif da.shape != db.shape:
            diffs.append(f"timeseries shapes differ: {da.shape} vs {db.shape}")
        else:
            for col in da.columns:
                x, y = da[col].to_numpy(), db[col].to_numpy()
                if x.dtype.kind == "f" and y.dtype.kind == "f":
                    same = (x == y) | (np.isnan(x) & np.isnan(y))
                else:
                    same = np.array([str(p) == str(q) for p, q in zip(x, y)], dtype=bool)
                if not same.all():
                    k = int(np.argmin(same))
                    diffs.append(f"timeseries {col} row {k}: {x[k]!r} vs {y[k]!r}")
                    if len(diffs) >= limit:
                        return diffs
    for name, reader in (
        ("events.csv", _csv_rows),
        ("alarms.csv", _csv_rows),
        ("audit.jsonl", _audit_rows),
    ):
        ra, rb = reader(a / name), reader(b / name)
        if ra != rb:
            k = next((i for i, (p, q) in enumerate(zip(ra, rb)) if p != q), min(len(ra), len(rb)))
            pa = ra[k] if k < len(ra) else "<end>"
            pb = rb[k] if k < len(rb) else "<end>"
            diffs.append(f"{name} ({len(ra)} vs {len(rb)} rows) first differs at {k}: {pa} | {pb}")
    if _junit(a / "junit.xml") != _junit(b / "junit.xml"):
        diffs.append("junit.xml verdicts differ")
    sa, sb = _summary(a / "summary.json"), _summary(b / "summary.json")
    for k in sorted(set(sa) | set(sb)):
        if sa.get(k) != sb.get(k):
            diffs.append(f"summary.json {k}: {sa.get(k)!r} vs {sb.get(k)!r}")
    return diffs[: limit * 3]


def _bench(n_points: int, repeat: int) -> list[tuple[str, float]]:
    from hil.store import PointStore
    from twin.pointmap import Point, PointMap

    pm = PointMap(
        tuple(
            Point(f"P{i}.v", "bus", "vm_pu", i, "to_field", "measurement") for i in range(n_points)
        )
    )
    names = [p.name for p in pm.points]
    rng = np.random.default_rng(1)
    vals = rng.uniform(0.9, 1.1, n_points)
    items = list(zip(names, vals.tolist()))
    out: list[tuple[str, float]] = []

    def timed(label: str, fn: Any) -> None:
        fn()  # warm
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        out.append((label, (time.perf_counter() - t0) / repeat * 1e6 * 1000 / n_points))

    for listener in (False, True):
        tag = " + per-point listener" if listener else ""
        for bulk in (True, False):
            store = PointStore(pm, clock=lambda: 1.0, bulk=bulk)
            if listener:
                store.subscribe(lambda p, s, src: None)
            pos = store.positions(names)
            kind = "bulk" if bulk else "reference (bulk=False)"
            if bulk:

                def per_point(store: Any = store) -> None:
                    for n, v in items:
                        store.set(n, v, source="plant")

                timed(f"set() per point{tag}", per_point)
            timed(f"set_many [{kind}]{tag}", lambda s=store: s.set_many(items, source="plant"))
            timed(
                f"set_array, positions cached [{kind}]{tag}",
                lambda s=store, p=pos: s.set_array(p, vals, source="plant"),
            )
            if bulk and not listener:

                def read_get(s: Any = store, pos: Any = pos) -> None:
                    s.set_array(pos, vals, source="plant")
                    for n in names:
                        s.get(n)

                def read_arr(s: Any = store, pos: Any = pos) -> None:
                    s.set_array(pos, vals, source="plant")
                    s.values[pos]
                    s.qualities[pos]

                timed("set_array + get() per point (Samples rebuilt)", read_get)
                timed("set_array + values[pos] / qualities[pos]", read_arr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = ap.parse_args(argv)
    if args.compare:
        diffs = compare_folders(*args.compare)
        if diffs:
            print("\n".join(diffs))
            return 1
        print(f"same run: {args.compare[0]} == {args.compare[1]}")
        return 0
    if not (1 <= args.points <= 1_000_000 and 1 <= args.repeat <= 100_000):
        ap.error("expected 1 <= --points <= 1e6 and 1 <= --repeat <= 1e5")
    rows = _bench(args.points, args.repeat)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"point store, {args.points} points, {args.repeat} repeats; load average {load}")
    print("| operation | us per 1,000 points |")
    print("|---|---:|")
    for label, us in rows:
        print(f"| {label} | {us:,.0f} |" if math.isfinite(us) else f"| {label} | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
