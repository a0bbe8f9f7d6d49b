"""kill -9 across processes (issue 11), as a user runs it: ``gridtwin emulate`` in one process,
``gridtwin run ... --hardware`` (the twin) in another, a separate Modbus master reading.

- The twin killed with SIGKILL: the heartbeat stops; within the watchdog time (bounded here
  generously) the inverters go to their safe state (P limit 0, P 0), the emulator logs it, the
  measurements the twin had served age into STALE (answered 0x0B); the run's results folder keeps
  what it recorded before the kill.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_S = 2.0


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    fh = open(log, "w")  # noqa: SIM115 - the child writes it
    return subprocess.Popen(cmd, cwd=log.parent, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _wait(cond, timeout_s: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_twin_killed_9_the_inverters_go_safe_and_served_values_age(tmp_path: Path) -> None:
    from pymodbus.client import ModbusTcpClient

    import grids
    from twin.pointmap import generate_pointmap
    from twin.recorder import read_timeseries

    pm = generate_pointmap(grids.load("cigre_mv"), mode="hil")
    emu_log = tmp_path / "emu.log"
    emu = _start(
        [
            sys.executable,
            "-m",
            "scenarios.cli",
            "emulate",
            "--grid",
            "cigre_mv",
            "--opcua-port",
            "0",
            "--modbus-port",
            "0",
            "--duration",
            "350",
            "--insecure",
            "--user",
            "plant:pw-plant:plant",
            "--watchdog-s",
            str(WATCHDOG_S),
            "--audit",
            str(tmp_path / "audit.jsonl"),
        ],
        emu_log,
    )
    twin = None
    try:
        assert _wait(lambda: "\nserving" in emu_log.read_text(), 120), emu_log.read_text()
        text = emu_log.read_text()
        endpoint = re.search(r"OPC UA\s+(opc\.tcp://\S+)", text).group(1)
        port = int(re.search(r"Modbus\s+127\.0\.0\.1:(\d+)", text).group(1))
        (tmp_path / "hardware.toml").write_text(
            f'[[device]]\nname = "bench"\npoints = ["*"]\n\n[device.opcua]\n'
            f'endpoint = "{endpoint}"\nuser = "plant"\npassword = "pw-plant"\nmode = "poll"\n'
            f'timeout_s = 2.0\n\n[device.modbus]\nhost = "127.0.0.1"\nport = {port}\n'
            "timeout_s = 1.0\n"
        )
        (tmp_path / "sc.toml").write_text(
            'name = "kill9"\ngrid = "cigre_mv"\nhardware = "hardware.toml"\nmode = "hil"\n'
            'start = "12:00"\nduration = "300s"\nstep = "0.5s"\npace = "realtime"\n'
        )
        twin = _start(
            [sys.executable, "-m", "scenarios.cli", "run", "sc.toml", "--out", "out"],
            tmp_path / "twin.log",
        )
        hb = pm["SS1.heartbeat"].modbus
        pv = next(p for p in pm.points if p.table == "sgen" and p.column == "p_limit_pct")
        pv_p = pm[pv.name.replace("p_limit_pct", "p_mw")].modbus
        meas = next(p for p in pm.points if p.kind == "measurement" and p.direction == "to_field")
        c = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
        assert c.connect()

        def f32(rr) -> float:
            return struct.unpack(">f", struct.pack(">HH", *rr.registers))[0]

        def beat() -> int:
            rr = c.read_holding_registers(hb.address, count=1, device_id=hb.unit)
            return -1 if rr.isError() else rr.registers[0]

        # the twin beats, and has run long enough to have flushed records (60 steps)
        ok = _wait(lambda: beat() >= 70 or twin.poll() is not None, 200, 0.5)
        assert ok and twin.poll() is None, (tmp_path / "twin.log").read_text()[-3000:]
        lim = c.read_holding_registers(pv.modbus.address, count=2, device_id=pv.modbus.unit)
        assert f32(lim) == 100.0
        rr = c.read_input_registers(meas.modbus.address, count=2, device_id=meas.modbus.unit)
        assert not rr.isError()  # Good while the twin writes it
        os.kill(twin.pid, signal.SIGKILL)
        twin.wait(timeout=10)
        last = beat()

        def safe() -> bool:
            lim = c.read_holding_registers(pv.modbus.address, count=2, device_id=pv.modbus.unit)
            p = c.read_input_registers(pv_p.address, count=2, device_id=pv_p.unit)
            return f32(lim) == 0.0 and f32(p) == 0.0

        assert _wait(safe, WATCHDOG_S + 10.0, 0.1)
        assert beat() == last  # nobody beats any more

        def stale() -> bool:  # STALE (0x0B), not the old value as Good: 3 x interval_s
            rr = c.read_input_registers(meas.modbus.address, count=2, device_id=meas.modbus.unit)
            return rr.isError() and rr.exception_code == 0x0B

        assert _wait(stale, 3 * meas.interval_s + 10.0, 0.1)
        assert _wait(lambda: "safe state at" in emu_log.read_text(), 5)
        assert "values not refreshed by their writer are STALE" in emu_log.read_text()
        c.close()
        # what the twin recorded before it was killed is still there
        ts = read_timeseries(tmp_path / "out")
        assert len(ts) >= 60
    finally:
        if twin is not None:
            _stop(twin)
        _stop(emu)
