"""``gridtwin run FILE --serve``: an outside Modbus master (another process, a real pymodbus
client over loopback) reads the simulated measurements while the scenario runs and writes a
breaker command that the twin follows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

import grids
from twin.pointmap import decode_registers, generate_pointmap
from twin.recorder import read_events, read_timeseries

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SCENARIO = """
name = "served"
grid = "urban_district"
hardware = "emulated"
links = ["direct"]
start = "12:00"
duration = "30s"
step = "0.5s"

[record]
quantities = ["line.i_ka[L_SS1_N1]", "switch.closed[Q45]", "trafo.tap_pos[T1]"]

[[event]]
kind = "load_step"
match = "RES_*"
factor = 1.6
at = "+8s"

[[check]]
kind = "converged"
"""


def _start_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, int]:
    f = tmp_path / "served.toml"
    f.write_text(SCENARIO)
    log = tmp_path / "run.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scenarios.cli",
                "run",
                str(f),
                "--serve",
                "--no-progress",
                "--out",
                str(tmp_path / "out"),
            ],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"serving modbus: 127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, log, int(m.group(1))
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the run did not print its Modbus port:\n" + log.read_text())


def test_an_outside_modbus_master_reads_and_commands_while_the_run_goes(tmp_path: Path) -> None:
    pm = generate_pointmap(grids.load("urban_district"), mode="hil")
    amps, cmd = pm["L_SS1_N1.i_ka"], pm["Q45.cmd"]
    assert amps.modbus is not None and cmd.modbus is not None
    proc, log, port = _start_run(tmp_path)
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2)
    seen: list[float] = []
    try:
        assert client.connect()

        def read_amps() -> float:
            rr = client.read_input_registers(
                amps.modbus.address, count=2, device_id=amps.modbus.unit
            )
            assert not rr.isError(), rr
            return decode_registers(amps, rr.registers)

        # poll (bounded) until the current rises well above what it was first
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            v = read_amps()
            if v > 0:
                seen.append(v)
            if len(seen) > 2 and v > 1.05 * seen[0]:
                break
            time.sleep(0.25)
        assert len(seen) > 2 and max(seen) > 1.05 * seen[0], seen
        # close the ring from outside: the twin must follow the breaker the master operated
        wr = client.write_coil(cmd.modbus.address, True, device_id=cmd.modbus.unit)
        assert not wr.isError(), wr
        # a SCADA raise of the tap changer: manual mode, then one pulse on tap_raise
        auto, up = pm["T1.avr_auto"], pm["T1.tap_raise"]
        assert auto.modbus is not None and up.modbus is not None
        wr = client.write_register(auto.modbus.address, 0, device_id=auto.modbus.unit)
        assert not wr.isError(), wr
        wr = client.write_coil(up.modbus.address, True, device_id=up.modbus.unit)
        assert not wr.isError(), wr
    finally:
        client.close()
    assert proc.wait(timeout=120) == 0, log.read_text()
    ev = read_events(tmp_path / "out")
    change = ev[(ev["kind"] == "field_change") & ev["message"].str.startswith("Q45.closed")]
    assert len(change) == 1, ev[["time_s", "kind", "message"]]
    assert "command from modbus" in change["message"].iloc[0]
    tap = ev[(ev["kind"] == "field_change") & ev["message"].str.startswith("T1.tap_pos")]
    assert len(tap) == 1, ev[["time_s", "kind", "message"]]
    assert "command from modbus" in tap["message"].iloc[0]
    ts = read_timeseries(tmp_path / "out")
    closed = ts["switch.closed[Q45]"].to_numpy()
    assert closed[0] == 0.0 and closed[-1] == 1.0
    taps = ts["trafo.tap_pos[T1]"].to_numpy()
    assert taps[-1] == taps[0] + 1, taps
    assert ts["line.i_ka[L_SS1_N1]"].max() > 1.05 * ts["line.i_ka[L_SS1_N1]"].iloc[0]


def test_twin_server_runs_for_the_run_and_is_read_by_a_client(tmp_path: Path) -> None:
    """--twin-server: the twin's read-only OPC UA server serves while the run goes, secure by
    default (issue 11): a client trusted into the run's one-time PKI reads it over
    SignAndEncrypt with the one-time viewer login."""
    import threading

    from asyncua.sync import Client

    from hil.security.certs import Pki
    from scenarios.config import loads_scenario
    from scenarios.engine import run_scenario

    sc = loads_scenario(
        SCENARIO.replace('links = ["direct"]', 'links = ["direct"]\npace = "realtime"').replace(
            'duration = "30s"', 'duration = "12s"'
        )
    )
    ready: dict[str, str] = {}
    up = threading.Event()

    def on_ready(ends: dict[str, str]) -> None:
        ready.update(ends)
        up.set()

    result: dict = {}
    t = threading.Thread(
        target=lambda: result.update(
            res=run_scenario(sc, write_files=False, twin_server=0, on_ready=on_ready)
        )
    )
    t.start()
    try:
        assert up.wait(120), "the twin server did not start"
        endpoint = ready["twin_server"]
        assert endpoint.startswith("opc.tcp://127.0.0.1:")
        me = Pki(tmp_path / "client")
        me.create(app_uri="urn:gridtwin:test:client", common_name="test client")
        Pki(Path(ready["trusted_clients"]).parent).trust(me.cert)
        user, _, rest = ready["twin_server_user"].partition(" / ")
        client = Client(endpoint, timeout=5)
        client.application_uri = me.app_uri()
        client.set_user(user)
        client.set_password(rest.split(" ")[0])
        client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{me.cert},{me.key}")
        with client:
            objects = client.nodes.objects
            assert any("Twin" in str(c.read_browse_name()) for c in objects.get_children())
    finally:
        t.join(timeout=120)
    assert result["res"].error == ""
    kinds = [e["kind"] for e in result["res"].recorder.events]
    assert "serving" in kinds


def test_inject_plant_faults_become_events():
    """``--inject frozen:POINT@T``, ``offline:DEVICE@T``, ``online:DEVICE@T``."""
    from scenarios.config import loads_scenario, with_injections
    from twin.errors import ConfigError

    sc = loads_scenario('grid = "ieee14"\nduration = "1h"\n')
    got = with_injections(sc, ["frozen:L1.i_ka@+20s", "offline:Q1@30", "online:Q1@60"]).events
    assert [(e.kind, e.at, e.params) for e in got[-3:]] == [
        ("meas_frozen", 20.0, (("point", "L1.i_ka"),)),
        ("comms_loss", 30.0, (("target", "Q1"),)),
        ("comms_restore", 60.0, (("target", "Q1"),)),
    ]
    for bad in ("frozen:", "frozen:L1.i_ka=1", "offline:Q1@soon", "meas_bias:X"):
        with pytest.raises(ConfigError, match="--inject"):
            with_injections(sc, [bad])
