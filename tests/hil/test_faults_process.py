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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_emulator_killed_9_and_restarted_the_twin_detects_and_reconciles(tmp_path: Path):
    """A separate emulator process killed -9 under the twin's sync loop: the twin's inputs turn
    COMMS_LOST (no step fails); the emulator restarted on the same ports (its setpoints back at
    their defaults): the links reconnect and the twin reads back what it had written before it
    writes again, naming what differs."""
    import asyncio
    import warnings

    import grids
    from hil.links.modbus import ModbusLink
    from hil.links.opcua import OpcuaLink
    from hil.sync import SyncLoop
    from twin.model import GridModel
    from twin.pointmap import generate_pointmap
    from twin.quality import Quality

    net = grids.load("cigre_mv")
    pm = generate_pointmap(net, mode="hil")
    ua_port, mb_port = _free_port(), _free_port()
    cmd = [
        sys.executable,
        "-m",
        "scenarios.cli",
        "emulate",
        "--grid",
        "cigre_mv",
        "--opcua-port",
        str(ua_port),
        "--modbus-port",
        str(mb_port),
        "--duration",
        "300",
        "--insecure",
        "--user",
        "plant:pw-plant:plant",
        "--watchdog-s",
        str(WATCHDOG_S),
        "--audit",
        str(tmp_path / "audit.jsonl"),
    ]

    def start(n: int) -> subprocess.Popen:
        log = tmp_path / f"emu{n}.log"
        proc = _start(cmd, log)
        assert _wait(lambda: "\nserving" in log.read_text(), 120), log.read_text()
        return proc

    emu = start(1)
    links: list = []
    try:
        outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
        sp = next(p for p in pm.points if p.table == "sgen" and p.column == "p_limit_pct")
        mb = ModbusLink(
            "127.0.0.1",
            mb_port,
            [p for p in pm.points if p not in outputs],
            timeout_s=0.5,
            backoff_max_s=0.5,
        )
        ua = OpcuaLink(
            f"opc.tcp://127.0.0.1:{ua_port}/gridtwin/",
            outputs,
            user="plant",
            password="pw-plant",
            namespace=pm.namespace,
            watchdog_s=0.3,
            timeout_s=1.0,
            backoff_max_s=0.5,
        )
        links = [mb, ua]
        for lk in links:
            await lk.connect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GridModel(net)
        loop = SyncLoop(model, pm, links, mode="hil")
        await mb.write_point(sp.name, 50.0)  # the twin's setpoint, lost with the restart
        steps = 0
        an_input = mb.inputs[0].name

        async def run_until(cond, timeout_s: float) -> bool:
            nonlocal steps
            end = time.monotonic() + timeout_s
            while time.monotonic() < end:
                await loop.step(time.time())
                steps += 1
                if cond():
                    return True
                await asyncio.sleep(0.2)
            return False

        assert await run_until(lambda: loop.heartbeats_sent >= 5, 30)
        assert loop.samples[an_input].quality is Quality.GOOD
        emu.kill()  # SIGKILL
        emu.wait(timeout=10)
        assert await run_until(
            lambda: not mb.connected and loop.samples[an_input].quality is Quality.COMMS_LOST, 30
        )
        sent = loop.heartbeats_sent
        assert await run_until(lambda: True, 1.0)
        assert loop.heartbeats_sent == sent  # nothing written to a link that is down
        emu = start(2)  # same ports, fresh store: p_limit_pct is 100 again
        assert await run_until(lambda: any(r[1] == mb.name for r in loop.reconciled), 60)
        t, name, differ = next(r for r in loop.reconciled if r[1] == mb.name)
        assert differ == {sp.name: (50.0, 100.0)}  # named; the field's value kept
        assert await run_until(lambda: loop.samples[an_input].quality is Quality.GOOD, 30)
        assert loop.counters()["steps"] == steps  # every step ran, none failed
    finally:
        for lk in links:
            await lk.close()
        _stop(emu)
