"""The results recorder: columns in memory, streamed to Parquet and CSV as the run goes.

One column per recorded quantity, named ``<table>.<column>[<label>]``, plus ``time_s``. Rows are
buffered and written as one Parquet row group every ``flush_every`` records, so a long run does not
hold the file open in an unknown state. ``close()`` writes the Parquet footer; callers close the
recorder in a ``finally`` so an exception or Ctrl-C keeps what was recorded (a hard kill of the
process loses the footer of ``timeseries.parquet``; events.csv and alarms.csv are flushed per line).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np

_log = logging.getLogger(__name__)

TIMESERIES_FILE = "timeseries.parquet"
EVENTS_FILE = "events.csv"
ALARMS_FILE = "alarms.csv"
EVENT_FIELDS = ("time_s", "kind", "message", "fields")
ALARM_FIELDS = ("time_s", "point", "field_value", "twin_value", "tolerance", "message")


def column_name(table: str, column: str, label: str | int) -> str:
    """The recorder's column name for one model quantity: ``bus.vm_pu[B1]``."""
    return f"{table}.{column}[{label}]"


class Recorder:
    """Collect time series, events and alarms of one run; write them under ``out_dir``.

    Args:
        out_dir: folder for the result files; ``None`` keeps everything in memory only.
        flush_every: records per Parquet row group.
    """

    def __init__(self, out_dir: Path | str | None, *, flush_every: int = 60) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every: expected an integer >= 1, found {flush_every!r}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.flush_every = int(flush_every)
        self._names: list[str] = ["time_s"]
        self._data: dict[str, list[float]] = {"time_s": []}
        self._pending = 0  # rows not yet written to Parquet
        self._written = 0  # rows already written
        self._schema_names: list[str] | None = None
        self._writer: Any = None
        self._grown = False  # a column appeared after the Parquet schema was fixed
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
            self._events_csv.writerow(EVENT_FIELDS)
            self._events_fh.flush()
            self._alarms_fh = open(self.out_dir / ALARMS_FILE, "w", newline="", encoding="utf-8")
            self._alarms_csv = csv.writer(self._alarms_fh)
            self._alarms_csv.writerow(ALARM_FIELDS)
            self._alarms_fh.flush()

    # --- time series ------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self._data["time_s"])

    @property
    def names(self) -> list[str]:
        """Column names in the order they first appeared (``time_s`` first)."""
        return list(self._names)

    def record(self, time_s: float, values: Mapping[str, float]) -> None:
        """Append one row. Columns missing from ``values`` get NaN; new names add a column."""
        self._check_open()
        n = self.rows
        for name, value in values.items():
            col = self._data.get(name)
            if col is None:
                col = self._data[name] = [math.nan] * n
                self._names.append(name)
                if self._schema_names is not None:
                    self._grown = True
            col.append(float(value))
        self._data["time_s"].append(float(time_s))
        for name in self._names:
            col = self._data[name]
            if len(col) == n:
                col.append(math.nan)
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()

    def column(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._data[name], dtype=float)
        except KeyError:
            raise KeyError(f"no recorded column {name!r}; {len(self._names)} columns") from None

    def to_frame(self):
        """All rows recorded so far as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame({name: self._data[name] for name in self._names})

    def flush(self) -> None:
        """Write pending rows as one row group (no-op in memory-only mode)."""
        if self.out_dir is None or self._pending == 0 or self._grown:
            self._pending = 0 if self.out_dir is None else self._pending
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None or self._schema_names is None:
            self._schema_names = list(self._names)
            schema = pa.schema([(name, pa.float64()) for name in self._schema_names])
            self._writer = pq.ParquetWriter(self.out_dir / TIMESERIES_FILE, schema)
        names = self._schema_names
        lo, hi = self._written, self.rows
        table = pa.table({name: pa.array(self._data[name][lo:hi], pa.float64()) for name in names})
        self._writer.write_table(table)
        self._written = hi
        self._pending = 0

    # --- events and alarms ------------------------------------------------------------------
    def event(self, time_s: float, kind: str, message: str, **fields: Any) -> None:
        """Log one event (a line of events.csv, flushed at once)."""
        self._check_open()
        row = {"time_s": float(time_s), "kind": kind, "message": message, "fields": fields}
        self.events.append(row)
        if self._events_csv is not None and self._events_fh is not None:
            extra = json.dumps(fields, default=str, sort_keys=True) if fields else ""
            self._events_csv.writerow((f"{time_s:g}", kind, message, extra))
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
                (
                    f"{time_s:g}",
                    point,
                    repr(float(field_value)),
                    repr(float(twin_value)),
                    "" if tolerance is None else repr(float(tolerance)),
                    message,
                )
            )
            self._alarms_fh.flush()

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is pending and the Parquet footer; close the CSV files. Idempotent."""
        if self._closed:
            return
        try:
            if self.out_dir is not None:
                if self._grown:
                    self._rewrite_whole()
                else:
                    self.flush()
                    if self._writer is None:  # nothing recorded: still leave a readable file
                        self._write_table_at_once()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for fh in (self._events_fh, self._alarms_fh):
                if fh is not None:
                    fh.close()
            self._closed = True

    def _rewrite_whole(self) -> None:
        # The schema grew after the first row group: Parquet cannot add a column to an open file,
        # so rewrite it from memory (the earlier row groups stay on disk until this succeeds).
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        _log.info("recorder: columns were added mid-run; rewriting %s whole", TIMESERIES_FILE)
        self._write_table_at_once()

    def _write_table_at_once(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        assert self.out_dir is not None
        table = pa.table({name: pa.array(self._data[name], pa.float64()) for name in self._names})
        tmp = self.out_dir / (TIMESERIES_FILE + ".tmp")
        pq.write_table(table, tmp, row_group_size=max(self.flush_every, 1))
        tmp.replace(self.out_dir / TIMESERIES_FILE)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_timeseries(out_dir: Path | str):
    """Read ``<out_dir>/timeseries.parquet`` back as a pandas DataFrame."""
    import pandas as pd

    return pd.read_parquet(Path(out_dir) / TIMESERIES_FILE)


def read_events(out_dir: Path | str):
    import pandas as pd

    return pd.read_csv(Path(out_dir) / EVENTS_FILE, keep_default_na=False)


def read_alarms(out_dir: Path | str):
    import pandas as pd

    return pd.read_csv(Path(out_dir) / ALARMS_FILE, keep_default_na=False)
