"""An emulated run whose links are Modbus TCP and in-process (the default ``["direct",
"modbus"]``) never loads the OPC UA stack (asyncua, ~0.4 s of start-up) nor cryptography: the
substation serves Modbus only, the security defaults make no certificate. A run with an OPC UA
link still does. Separate processes (a fresh ``sys.modules``), the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHORT = """
name = "short_emulated"
grid = "urban_district"
hardware = "emulated"
{links}
start = "12:00"
duration = "5min"
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
mods = ("asyncua", "cryptography", "hil.emulator.opcua_server", "hil.links.opcua",
        "matplotlib", "pymodbus")
print("MODULES " + json.dumps({"code": code, **{m: m in sys.modules for m in mods}}))
"""


def _run(tmp_path: Path, links: str, out: str) -> dict[str, object]:
    f = tmp_path / f"{out}.toml"
    f.write_text(SHORT.format(links=links), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRIDTWIN_HOME=str(tmp_path / "home"))
    env.pop("GRIDTWIN_LIGHT_IMPORT", None)
    args = ["run", str(f), "-q", "--no-report", "--out", str(tmp_path / out)]
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("MODULES ")]
    assert line, (done.stdout[-2000:], done.stderr[-2000:])
    return json.loads(line[-1][len("MODULES ") :])


def test_an_emulated_modbus_run_imports_no_opcua_stack(tmp_path: Path) -> None:
    # the first process fills the grid cache (a miss imports the whole of pandapower)
    assert _run(tmp_path, "", "fills_caches")["code"] == 0
    got = _run(tmp_path, "", "default_links")  # the default links: direct + modbus
    assert got == {"code": 0, "asyncua": False, "cryptography": False,
                   "hil.emulator.opcua_server": False, "hil.links.opcua": False,
                   "matplotlib": False, "pymodbus": True}, got  # fmt: skip


def test_an_emulated_opcua_run_still_loads_it(tmp_path: Path) -> None:
    got = _run(tmp_path, 'links = ["direct", "opcua"]', "opcua")
    assert got["code"] == 0, got
    assert got["asyncua"] is True and got["hil.emulator.opcua_server"] is True, got
    assert got["hil.links.opcua"] is True, got
