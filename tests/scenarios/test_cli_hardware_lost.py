"""The exit-code table's last row through the real CLI: hardware lost with a stop policy
(``stale_policy = "refuse"``) ends the run with exit 3, and summary.json and junit.xml say why.

A separate ``gridtwin emulate`` process is the hardware; the test stops it mid-run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]

SCENARIO = """
name = "lost"
grid = "urban_district"
hardware = "hardware.toml"
start = "12:00"
duration = "10min"
step = "0.5s"
pace = "realtime"

[record]
quantities = ["bus.vm_pu[N2]"]

[[check]]
kind = "converged"
"""


def test_hardware_lost_with_refuse_policy_is_exit_3_with_summary(
    tmp_path: Path, emulator_starter
) -> None:
    emu = emulator_starter()
    (tmp_path / "hardware.toml").write_text(
        'stale_policy = "refuse"\nstale_factor = 2\n' + emu.hardware_toml(), encoding="utf-8"
    )
    f = tmp_path / "lost.toml"
    f.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "scenarios.cli", "run", str(f), "--out", str(out), "--no-report",
         "--no-progress"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        events = out / "events.csv"
        while not (events.exists() and ",field," in events.read_text(encoding="utf-8")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run did not reach its field"
            time.sleep(0.2)
        time.sleep(2.0)  # a few steps with the hardware there
        emu.stop()  # the hardware goes away
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, (stdout, stderr)
    assert "Traceback" not in stdout + stderr, stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "stopped" and summary["error"], summary
    assert 0 < summary["steps"] < summary["steps_planned"]
    err = ET.parse(out / "junit.xml").getroot().find(".//error")
    assert err is not None and err.get("message") == summary["error"]
    assert "could not complete" in stdout
