"""``gridtwin run`` imports what the run uses: a run of the model alone loads no OPC UA stack
(asyncua), no matplotlib and not pandapower's plotting; the report brings matplotlib in only
when it is written. Separate processes (a fresh ``sys.modules``), the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: urban_district is bundled as JSON: read from the grid cache after the first process
SHORT = """
name = "short"
grid = "urban_district"
hardware = "none"
start = "12:00"
duration = "30min"
step = "1min"

[[profile]]
name = "homes"
table = "load"
category = "residential"
shape = "residential"

[[check]]
kind = "converged"
"""

_PROBE = """
import json, sys
from scenarios.cli import main
code = main(sys.argv[1:])
mods = ("asyncua", "matplotlib", "pandapower.plotting", "dask", "distributed")
print("MODULES " + json.dumps({"code": code, **{m: m in sys.modules for m in mods}}))
"""


def _run(tmp_path: Path, *args: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRIDTWIN_HOME=str(tmp_path / "home"))
    env.pop("GRIDTWIN_CACHE", None)
    env.pop("GRIDTWIN_LIGHT_IMPORT", None)
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("MODULES ")]
    assert line, (done.stdout[-2000:], done.stderr[-2000:])
    return json.loads(line[-1][len("MODULES ") :])


def test_a_model_only_run_imports_no_opcua_no_matplotlib(tmp_path: Path) -> None:
    f = tmp_path / "short.toml"
    f.write_text(SHORT, encoding="utf-8")
    base = ("run", str(f), "-q")
    first = _run(tmp_path, *base, "--out", str(tmp_path / "a"), "--no-report")  # fills caches
    assert first["code"] == 0, first
    got = _run(tmp_path, *base, "--out", str(tmp_path / "b"), "--no-report")
    assert got == {"code": 0, "asyncua": False, "matplotlib": False,
                   "pandapower.plotting": False, "dask": False, "distributed": False}  # fmt: skip
    # the report draws with matplotlib (and only then imports it)
    rep = _run(tmp_path, *base, "--out", str(tmp_path / "c"))
    assert rep["code"] == 0 and rep["matplotlib"] is True and rep["asyncua"] is False, rep
    assert (tmp_path / "c" / "report.html").is_file()
