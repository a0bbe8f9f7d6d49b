"""A run that stops early (Ctrl-C, SIGTERM, a kill -9, results that cannot be written) through the
real CLI in a separate process: exit 3, a readable summary.json and junit.xml saying why (as far
as the disk allows) and every recorded row kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from twin.recorder import PARTS_DIR, read_events, read_timeseries

ROOT = Path(__file__).resolve().parents[2]
#: Long enough that a signal lands mid-run (1441 steps of the model alone on ieee9).
LONG = """
name = "long"
grid = "ieee9"
hardware = "none"
start = "00:00"
duration = "24h"
step = "1min"

[[check]]
kind = "converged"
"""
_WAIT_S = 240.0  # bound of every wait (a shared, busy machine)


def _start(tmp_path: Path, *extra: str, preexec=None) -> tuple[subprocess.Popen[str], Path]:
    f = tmp_path / "long.toml"
    f.write_text(LONG, encoding="utf-8")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenarios.cli", "run", str(f), "--out", str(out), "--no-report",
         "--no-progress", *extra],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec,
    )  # fmt: skip
    return proc, out


def _wait_for_rows(proc: subprocess.Popen[str], out: Path) -> None:
    """Until the first Parquet part (60 rows) is on disk, or fail."""
    deadline = time.monotonic() + _WAIT_S
    while not (out / PARTS_DIR / "part-00000.parquet").exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first flush: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no Parquet part within the wait")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("sig", "why"), [(signal.SIGINT, "Ctrl-C (SIGINT)"), (signal.SIGTERM, "SIGTERM")]
)
def test_a_signal_mid_run_leaves_summary_junit_and_rows(
    tmp_path: Path, sig: signal.Signals, why: str
) -> None:
    proc, out = _start(tmp_path)
    _wait_for_rows(proc, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=_WAIT_S)
    assert proc.returncode == 3, (stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "stopped" and summary["passed"] is False
    assert summary["error"].startswith(f"interrupted by {why} at "), summary["error"]
    err = ET.parse(out / "junit.xml").getroot().find(".//error")
    assert err is not None and f"interrupted by {why}" in err.get("message", "")
    ts = read_timeseries(out)  # the whole run was written: every recorded row
    assert (out / "timeseries.parquet").exists() and not (out / PARTS_DIR).exists()
    assert 60 <= len(ts) == summary["steps"] < 1441
    events = read_events(out)
    assert "KeyboardInterrupt" not in " ".join(events["message"])
    assert "interrupted" in set(events["kind"])
    assert "could not complete" in stdout


def test_a_hard_kill_leaves_readable_parts_and_a_summary_saying_so(tmp_path: Path) -> None:
    proc, out = _start(tmp_path)
    _wait_for_rows(proc, out)
    proc.kill()  # SIGKILL: no code of the run runs after this
    proc.communicate(timeout=_WAIT_S)
    ts = read_timeseries(out)  # from timeseries.parts/
    assert len(ts) >= 60 and list(ts["time_s"][:3]) == [0.0, 60.0, 120.0]
    assert "time" in ts.columns  # the absolute time is in the parts too
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "running" and summary["passed"] is False
    assert "did not finish" in summary["error"]


def _small_files() -> None:  # in the child: no file may grow past 20 kB (a "full disk")
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_results_that_cannot_be_written_say_so_and_keep_the_parts(tmp_path: Path) -> None:
    """The whole-run Parquet (bigger than the limit) cannot be written at the end: the parts stay,
    summary.json and junit.xml (small) say why, exit 3."""
    # 24 h: the whole file (one row group, ~45 kB) is past the limit, each part (~9 kB) is not
    proc, out = _start(tmp_path, "--duration", "24h", preexec=_small_files)
    stdout, stderr = proc.communicate(timeout=_WAIT_S)
    assert proc.returncode == 3, (stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert "could not write" in summary["error"] and "timeseries.parquet" in summary["error"]
    assert ET.parse(out / "junit.xml").getroot().find(".//error") is not None
    ts = read_timeseries(out)
    assert len(ts) == 1441  # 24 parts of 60 rows and the last row as a 25th
    assert "could not complete" in stdout
