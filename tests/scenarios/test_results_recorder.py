"""twin.recorder.Recorder: columns in memory, Parquet row groups, events and alarms CSV."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from twin.recorder import (
    Recorder,
    column_name,
    read_alarms,
    read_events,
    read_timeseries,
)


def test_streams_row_groups_and_reads_back(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, flush_every=4)
    for k in range(10):
        rec.record(k * 60.0, {column_name("bus", "vm_pu", "N1"): 1.0 + k / 100, "x": float(k)})
    assert rec.rows == 10
    # two complete part files are on disk before close; close() writes the whole run
    assert sorted(p.name for p in (tmp_path / "timeseries.parts").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    rec.close()
    assert not (tmp_path / "timeseries.parts").exists()
    f = pq.ParquetFile(tmp_path / "timeseries.parquet")
    assert f.metadata.num_row_groups == 3 and f.metadata.num_rows == 10
    df = read_timeseries(tmp_path)
    assert list(df.columns) == ["time_s", "bus.vm_pu[N1]", "x"]
    assert df["time_s"].iloc[-1] == 540.0
    assert df["bus.vm_pu[N1]"].iloc[3] == pytest.approx(1.03)


def test_a_hard_kill_keeps_every_flushed_part_readable(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, flush_every=3)
    for k in range(8):  # 2 parts of 3 rows flushed, 2 rows pending
        rec.record(float(k), {"a": float(k), **({"late": 1.0} if k >= 4 else {})})
    # no close(): the process died here. Every flushed row is readable from the parts.
    assert not (tmp_path / "timeseries.parquet").exists()
    df = read_timeseries(tmp_path)
    assert list(df["time_s"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert math.isnan(df["late"].iloc[3]) and df["late"].iloc[4] == 1.0


def test_missing_values_are_nan_and_late_columns_are_kept(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, flush_every=2)
    rec.record(0, {"a": 1.0})
    rec.record(1, {"a": 2.0})  # flushed: schema fixed with column a
    rec.record(2, {"b": 5.0})  # a new column after the first row group
    rec.close()
    df = read_timeseries(tmp_path)
    assert list(df.columns) == ["time_s", "a", "b"]
    assert math.isnan(df["a"].iloc[2]) and math.isnan(df["b"].iloc[0])
    assert df["b"].iloc[2] == 5.0


def test_events_and_alarms_are_flushed_line_by_line(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    rec.event(12.5, "switch_open", "open Q12", element="Q12")
    # readable before close: a crash keeps it
    assert "open Q12" in (tmp_path / "events.csv").read_text()
    rec.alarm(60, "N3.vm_pu", 1.05, 1.0, 0.02, "divergence")
    assert "N3.vm_pu" in (tmp_path / "alarms.csv").read_text()
    rec.close()
    ev = read_events(tmp_path)
    assert ev["kind"].tolist() == ["switch_open"] and '"Q12"' in ev["fields"][0]
    al = read_alarms(tmp_path)
    assert al["point"].tolist() == ["N3.vm_pu"] and al["tolerance"][0] == 0.02


def test_memory_only_and_closed_recorder(tmp_path: Path) -> None:
    rec = Recorder(None)
    rec.record(0, {"a": 1})
    assert rec.column("a").tolist() == [1.0]
    assert rec.to_frame().shape == (1, 2)
    rec.close()
    with pytest.raises(RuntimeError, match="closed"):
        rec.record(1, {"a": 2})
    empty = Recorder(tmp_path / "empty")
    empty.close()
    assert read_timeseries(tmp_path / "empty").shape == (0, 1)
    with pytest.raises(ValueError, match="flush_every"):
        Recorder(None, flush_every=0)


def test_parts_wait_for_the_flush_interval(tmp_path: Path) -> None:
    """With ``flush_interval_s`` a part waits for that much wall time since the last one (a
    fast-paced run writes a part a second); the whole file keeps its row groups."""
    rec = Recorder(tmp_path, flush_every=2, flush_interval_s=3600.0)
    for k in range(5):
        rec.record(float(k), {"a": float(k)})
    assert not (tmp_path / "timeseries.parts").exists()  # no part within the interval
    rec.close()
    f = pq.ParquetFile(tmp_path / "timeseries.parquet")
    assert f.metadata.num_row_groups == 3 and f.metadata.num_rows == 5
    with pytest.raises(ValueError, match="flush_interval_s"):
        Recorder(None, flush_interval_s=-1.0)


def test_record_array_gives_the_rows_of_record(tmp_path: Path) -> None:
    """The step path's ``record_array`` (names looked up once per names object) writes what
    ``record`` writes, new columns and missing values included."""
    a, b = Recorder(tmp_path / "a", flush_every=2), Recorder(tmp_path / "b", flush_every=2)
    names1 = ("x", "y")
    names2 = ("y", "z", "x")
    rows = [(names1, [1.0, 2.0]), (names1, [3.0, 4.0]), (names2, [5.0, 6.0, 7.0]),
            (names1, [8.0, 9.0]), (("z",), [10.0])]  # fmt: skip
    for k, (names, vals) in enumerate(rows):
        a.record(float(k), dict(zip(names, vals)))
        b.record_array(float(k), names, np.asarray(vals))
    assert a.names == b.names == ["time_s", "x", "y", "z"]
    for name in a.names:
        assert np.array_equal(a.column(name), b.column(name), equal_nan=True), name
    a.close()
    b.close()
    da, db = read_timeseries(tmp_path / "a"), read_timeseries(tmp_path / "b")
    assert da.equals(db) and list(da.columns) == ["time_s", "x", "y", "z"]
    assert math.isnan(da["z"].iloc[0]) and da["z"].iloc[4] == 10.0


def test_background_part_writes_give_the_same_files(tmp_path: Path) -> None:
    """Parts written on the worker thread: the same parts and whole file as written inline;
    close() waits for them."""
    recs = {
        bg: Recorder(tmp_path / str(bg), flush_every=4, background_writes=bg)
        for bg in (False, True)
    }
    for k in range(10):
        for rec in recs.values():
            rec.record(k * 60.0, {"a": float(k), **({"b": 2.0 * k} if k > 5 else {})})
    recs[True]._check_parts(wait=True)  # the two parts are on disk (or their error raised)
    parts = {bg: sorted(p.name for p in (tmp_path / str(bg) / "timeseries.parts").iterdir())
             for bg in recs}  # fmt: skip
    assert parts[True] == parts[False] == ["part-00000.parquet", "part-00001.parquet"]
    for rec in recs.values():
        rec.close()
    a, b = (read_timeseries(tmp_path / str(bg)) for bg in (False, True))
    assert a.equals(b) and len(b) == 10


def test_a_background_part_that_fails_is_raised_by_the_next_flush(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, flush_every=2, background_writes=True)
    rec.record(0.0, {"a": 0.0})
    rec.record(1.0, {"a": 1.0})  # part 0 (creates timeseries.parts/)
    rec._check_parts(wait=True)
    blocker = tmp_path / "timeseries.parts" / "part-00001.parquet.tmp"
    blocker.mkdir()  # part 1's temporary file cannot be made (even by root)
    rec.record(2.0, {"a": 2.0})
    rec.record(3.0, {"a": 3.0})  # part 1 submitted: fails on the worker
    rec._inflight[-1].exception(timeout=60)
    rec.record(4.0, {"a": 4.0})
    with pytest.raises(IsADirectoryError):
        rec.record(5.0, {"a": 5.0})  # the next flush raises part 1's error
    rec.close()  # the whole file has every row
    assert list(read_timeseries(tmp_path)["time_s"]) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_the_whole_file_may_have_larger_row_groups_than_the_parts(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, flush_every=3, file_row_group=100)
    for k in range(10):
        rec.record(float(k), {"a": float(k)})
    assert len(list((tmp_path / "timeseries.parts").iterdir())) == 3  # parts of 3 rows
    rec.close()
    f = pq.ParquetFile(tmp_path / "timeseries.parquet")
    assert f.metadata.num_row_groups == 1 and f.metadata.num_rows == 10
    with pytest.raises(ValueError, match="file_row_group"):
        Recorder(None, file_row_group=0)
