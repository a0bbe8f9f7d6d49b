"""The results recorder: columns in memory, streamed to Parquet and CSV as the run goes.

One column per recorded quantity, named ``<table>.<column>[<label>]``, plus ``time_s`` (seconds
from the start) and, when the start is known, ``time`` (the absolute time: a Parquet timestamp,
ISO 8601 text in the last column of events.csv and alarms.csv). Rows are
buffered and written every ``flush_every`` records as a complete Parquet file of their own under
``timeseries.parts/`` (footer included), so even a hard kill of the process keeps every flushed
part readable. ``close()`` writes the whole run as ``timeseries.parquet`` (temporary file, then
rename) and removes the parts. ``read_timeseries`` reads ``timeseries.parquet`` or, after a crash,
the parts. events.csv and alarms.csv are flushed per line.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

_log = logging.getLogger(__name__)

TIMESERIES_FILE = "timeseries.parquet"
PARTS_DIR = "timeseries.parts"
EVENTS_FILE = "events.csv"
ALARMS_FILE = "alarms.csv"
EVENT_FIELDS = ("time_s", "kind", "message", "fields")
ALARM_FIELDS = ("time_s", "point", "field_value", "twin_value", "tolerance", "message")
#: The absolute time column beside ``time_s`` (ISO 8601 in the CSVs, a timestamp in Parquet),
#: written when the recorder knows the run's start; readers select columns by name, so folders
#: without it (older runs) read the same.
TIME_COLUMN = "time"


def column_name(table: str, column: str, label: str | int) -> str:
    """The recorder's column name for one model quantity: ``bus.vm_pu[B1]``."""
    return f"{table}.{column}[{label}]"


class Recorder:
    """Collect time series, events and alarms of one run; write them under ``out_dir``.

    Args:
        out_dir: folder for the result files; ``None`` keeps everything in memory only.
        flush_every: records per part file (and per row group of the whole file unless
            ``file_row_group`` says otherwise).
        flush_interval_s: a part file is written once ``flush_every`` records are pending and
            at least this much wall time has passed since the last one (default 0: every
            ``flush_every`` records). With 1.0 a fast-paced run writes a part a second, not
            one per ``flush_every`` steps (each part costs ~15-30 ms at 500 columns), but its
            parts are larger.
        file_row_group: rows per row group of the whole-run ``timeseries.parquet`` (default:
            ``flush_every``). Larger groups write and read much faster: city_day's 1,441 rows
            x 515 columns take ~0.35 s to write and as long to read in groups of 60 rows,
            ~0.04 s in one group.
        background_writes: write the part files on a worker thread (pyarrow writes without
            the GIL: on a second core the part costs the step loop only its table's making).
            A part's write error is raised by the next :meth:`flush` or by :meth:`close`;
            :meth:`close` waits for the parts before writing the whole file.
        start: the date-time of ``time_s = 0``; with it every file gets a ``time`` column
            (ISO 8601, second resolution or finer) beside ``time_s``.
    """

    def __init__(
        self,
        out_dir: Path | str | None,
        *,
        flush_every: int = 60,
        start: _dt.datetime | None = None,
        flush_interval_s: float = 0.0,
        background_writes: bool = False,
        file_row_group: int | None = None,
    ) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every: expected an integer >= 1, found {flush_every!r}")
        if not flush_interval_s >= 0:
            raise ValueError(
                f"flush_interval_s: expected a number >= 0, found {flush_interval_s!r}"
            )
        self.flush_interval_s = float(flush_interval_s)
        self.background_writes = bool(background_writes)
        if file_row_group is not None and not (
            isinstance(file_row_group, int) and file_row_group >= 1
        ):
            raise ValueError(
                f"file_row_group: expected an integer >= 1 or None, found {file_row_group!r}"
            )
        self.file_row_group = file_row_group or int(flush_every)
        self._pool: Any = None  # the part writer (a one-thread executor), made on first use
        self._inflight: list[Any] = []  # futures of part writes not yet checked
        self._last_flush = time.monotonic()
        self.start = start
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.flush_every = int(flush_every)
        self._names: list[str] = ["time_s"]
        self._pos: dict[str, int] = {"time_s": 0}
        #: one float64 array per row, as long as the column list was when it was recorded
        #: (columns only grow: a shorter row is NaN in the later columns)
        self._rows: list[np.ndarray] = []
        self._last_names: Sequence[str] | None = None  # record_array's names of the last call
        self._last_pos: np.ndarray = np.zeros(0, dtype=np.intp)
        self._pending = 0  # rows not yet written to Parquet
        self._written = 0  # rows already written
        self._parts = 0  # part files written
        self.events: list[dict[str, Any]] = []
        self.alarms: list[dict[str, Any]] = []
        self._closed = False
        self._events_fh: TextIO | None = None
        self._alarms_fh: TextIO | None = None
        self._events_csv: Any = None
        self._alarms_csv: Any = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._events_fh = open(self.out_dir / EVENTS_FILE, "w", newline="", encoding="utf-8")
            self._events_csv = csv.writer(self._events_fh)
            self._events_csv.writerow(self._with_time(EVENT_FIELDS))
            self._events_fh.flush()
            self._alarms_fh = open(self.out_dir / ALARMS_FILE, "w", newline="", encoding="utf-8")
            self._alarms_csv = csv.writer(self._alarms_fh)
            self._alarms_csv.writerow(self._with_time(ALARM_FIELDS))
            self._alarms_fh.flush()

    def _with_time(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """``row`` with the header ``time`` last (when the start is known): last, so that the
        columns of older files keep their positions for tools that read them by position."""
        return row if self.start is None else (*row, TIME_COLUMN)

    def iso_time(self, time_s: float) -> str:
        """The absolute time of ``time_s`` as ISO 8601 (``""`` without a start)."""
        if self.start is None or not math.isfinite(time_s):
            return ""
        t = self.start + _dt.timedelta(seconds=float(time_s))
        return t.isoformat(timespec="milliseconds" if t.microsecond else "seconds")

    def _csv_row(self, time_s: float, rest: tuple[Any, ...]) -> tuple[Any, ...]:
        row: tuple[Any, ...] = (f"{time_s:g}", *rest)
        return row if self.start is None else (*row, self.iso_time(time_s))

    # --- time series ------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self._rows)

    @property
    def names(self) -> list[str]:
        """Column names in the order they first appeared (``time_s`` first)."""
        return list(self._names)

    def _column_pos(self, name: str) -> int:
        p = self._pos.get(name)
        if p is None:
            p = self._pos[name] = len(self._names)
            self._names.append(name)
        return p

    def record(self, time_s: float, values: Mapping[str, float]) -> None:
        """Append one row. Columns missing from ``values`` get NaN; new names add a column."""
        self._check_open()
        pos = [self._column_pos(name) for name in values]
        row = np.full(len(self._names), math.nan)
        row[0] = float(time_s)
        if pos:
            row[pos] = np.fromiter(values.values(), dtype=float, count=len(pos))
        self._append(row)

    def record_array(self, time_s: float, names: Sequence[str], values: Any) -> None:
        """Append one row given as parallel ``names`` and ``values`` (an array): the step
        path's form. Pass the same ``names`` object every step and the columns are looked up
        once (a new object is looked up again). Same result as :meth:`record`."""
        self._check_open()
        if names is not self._last_names:
            self._last_pos = np.fromiter(
                (self._column_pos(n) for n in names), dtype=np.intp, count=len(names)
            )
            self._last_names = names
        row = np.full(len(self._names), math.nan)
        row[0] = float(time_s)
        row[self._last_pos] = values
        self._append(row)

    def _append(self, row: np.ndarray) -> None:
        self._rows.append(row)
        self._pending += 1
        if self._pending >= self.flush_every and (
            self.flush_interval_s <= 0
            or time.monotonic() - self._last_flush >= self.flush_interval_s
        ):
            self.flush()

    def _matrix(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` as a (columns, rows) array, NaN where a row predates a column."""
        rows = self._rows[lo:hi]
        n = len(self._names)
        if all(len(r) == n for r in rows):
            return np.stack(rows, axis=1) if rows else np.zeros((n, 0))
        out = np.full((n, len(rows)), math.nan)
        for i, r in enumerate(rows):
            out[: len(r), i] = r
        return out

    def column(self, name: str) -> np.ndarray:
        p = self._pos.get(name)
        if p is None:
            raise KeyError(f"no recorded column {name!r}; {len(self._names)} columns")
        return np.asarray([r[p] if p < len(r) else math.nan for r in self._rows], dtype=float)

    def to_frame(self):
        """All rows recorded so far as a pandas DataFrame."""
        import pandas as pd

        m = self._matrix(0, self.rows)
        return pd.DataFrame({name: m[j] for j, name in enumerate(self._names)})

    def flush(self) -> None:
        """Write pending rows as one complete Parquet part file (no-op in memory-only mode)."""
        if self.out_dir is None or self._pending == 0:
            self._pending = 0
            return
        self._check_parts(wait=False)
        lo, hi = self._written, self.rows
        parts = self.out_dir / PARTS_DIR
        parts.mkdir(exist_ok=True)
        path = parts / f"part-{self._parts:05d}.parquet"
        if self.background_writes:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="recorder-parts")
            self._inflight.append(self._pool.submit(_write_table, self._table(lo, hi), path,
                                                    self.flush_every))  # fmt: skip
        else:
            self._write_parquet(path, lo, hi)
        self._last_flush = time.monotonic()
        self._parts += 1
        self._written = hi
        self._pending = 0

    def _check_parts(self, *, wait: bool) -> None:
        """Raise the first error of a finished background part write (all of them: ``wait``)."""
        pending = []
        first: BaseException | None = None
        for fut in self._inflight:
            if wait or fut.done():
                exc = fut.exception()
                if exc is not None and first is None:
                    first = exc
            else:
                pending.append(fut)
        self._inflight = pending
        if first is not None:
            raise first

    def _write_parquet(self, path: Path, lo: int, hi: int) -> None:
        _write_table(self._table(lo, hi), path, self.flush_every)

    def _table(self, lo: int, hi: int) -> Any:
        """Rows ``lo:hi`` as a pyarrow Table (``time_s``, ``time`` when known, the columns)."""
        import pyarrow as pa

        m = self._matrix(lo, hi)
        names = self._names
        arrays = [pa.array(m[j]) for j in range(len(names))]
        if self.start is not None:
            base = np.datetime64(self.start.replace(tzinfo=None), "ms")
            ms = np.round(m[0] * 1e3)
            stamps = base + ms.astype("timedelta64[ms]")
            arrays.insert(1, pa.array(stamps, pa.timestamp("ms")))
            names = [names[0], TIME_COLUMN, *names[1:]]
        return pa.Table.from_arrays(arrays, names=names)

    # --- events and alarms ------------------------------------------------------------------
    def event(self, time_s: float, kind: str, message: str, **fields: Any) -> None:
        """Log one event (a line of events.csv, flushed at once)."""
        self._check_open()
        row = {"time_s": float(time_s), "kind": kind, "message": message, "fields": fields}
        self.events.append(row)
        if self._events_csv is not None and self._events_fh is not None:
            extra = json.dumps(fields, default=str, sort_keys=True) if fields else ""
            self._events_csv.writerow(self._csv_row(time_s, (kind, message, extra)))
            self._events_fh.flush()

    def alarm(
        self,
        time_s: float,
        point: str,
        field_value: float,
        twin_value: float,
        tolerance: float | None,
        message: str,
    ) -> None:
        """Log one alarm (a line of alarms.csv, flushed at once)."""
        self._check_open()
        row = {
            "time_s": float(time_s),
            "point": point,
            "field_value": float(field_value),
            "twin_value": float(twin_value),
            "tolerance": None if tolerance is None else float(tolerance),
            "message": message,
        }
        self.alarms.append(row)
        if self._alarms_csv is not None and self._alarms_fh is not None:
            self._alarms_csv.writerow(
                self._csv_row(
                    time_s,
                    (
                        point,
                        repr(float(field_value)),
                        repr(float(twin_value)),
                        "" if tolerance is None else repr(float(tolerance)),
                        message,
                    ),
                )
            )
            self._alarms_fh.flush()

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Write the whole run as timeseries.parquet, remove the parts, close the CSV files.

        Idempotent. When writing fails (OSError, raised), the parts already on disk stay where
        they are and the rows not yet in a part are written as one more part if they fit.
        """
        if self._closed:
            return
        try:
            if self.out_dir is not None:
                try:
                    try:
                        self._check_parts(wait=True)
                    except OSError as exc:  # the whole file below supersedes the parts
                        _log.warning("a part of %s was not written: %s", self.out_dir, exc)
                    _write_table(self._table(0, self.rows), self.out_dir / TIMESERIES_FILE,
                                 self.file_row_group)  # fmt: skip
                except OSError:  # a full disk: the last rows as one more (small) part, if it fits
                    try:
                        self.flush()
                    except OSError:
                        pass
                    raise
                # the whole run is in one file now: the parts are redundant, a part's .tmp left
                # by a write that a signal cut short included
                shutil.rmtree(self.out_dir / PARTS_DIR, ignore_errors=True)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            for fh in (self._events_fh, self._alarms_fh):
                if fh is not None:
                    fh.close()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_table(table: Any, path: Path, row_group_size: int) -> None:
    """``table`` as the Parquet file ``path`` (a temporary file, then renamed)."""
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, row_group_size=max(row_group_size, 1))
    tmp.replace(path)


def read_timeseries(out_dir: Path | str):
    """Read ``<out_dir>/timeseries.parquet`` back as a pandas DataFrame.

    After a crash (no ``timeseries.parquet`` yet) the flushed parts are read and joined; columns
    that appeared mid-run are NaN in the parts written before them.
    """
    import pandas as pd

    out = Path(out_dir)
    whole = out / TIMESERIES_FILE
    parts = sorted((out / PARTS_DIR).glob("part-*.parquet")) if (out / PARTS_DIR).is_dir() else []
    if whole.exists() or not parts:
        return pd.read_parquet(whole)
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_events(out_dir: Path | str):
    import pandas as pd

    return pd.read_csv(Path(out_dir) / EVENTS_FILE, keep_default_na=False)


def read_alarms(out_dir: Path | str):
    import pandas as pd

    return pd.read_csv(Path(out_dir) / ALARMS_FILE, keep_default_na=False)
