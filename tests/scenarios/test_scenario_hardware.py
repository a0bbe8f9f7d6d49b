"""A scenario pointed at "real" hardware through a hardware.toml: here an emulated substation
started separately on loopback, on its own wall clock, reached over OPC UA and Modbus TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

import grids
from hil.emulator import EmulatedSubstation
from scenarios.engine import run_scenario
from twin.pointmap import generate_pointmap

SCENARIO = """
name = "bench"
grid = "urban_district"
hardware = "hardware.toml"
start = "12:00"
duration = "3s"
step = "0.5s"
pace = "realtime"
speed = 1.0

[record]
quantities = ["switch.closed", "bus.vm_pu[N2]"]
setpoints = false

[[event]]
kind = "switch_open"
element = "Q12"
at = "+0.5s"

[[check]]
kind = "converged"

[[check]]
name = "breaker_opened_through_the_field"
kind = "switch_state"
element = "Q12"
closed = false
at = "+2.5s"
"""


@pytest.mark.timeout(120)
async def test_scenario_against_hardware_file(tmp_path: Path) -> None:
    net = grids.load("urban_district")
    pm = generate_pointmap(net, mode="hil")
    users = {"plant": ("pw-plant", "plant")}
    async with EmulatedSubstation(net, pm, users=users, initial_loadflow=False) as sub:
        (tmp_path / "hardware.toml").write_text(
            f"""
[[device]]
name = "bench"
points = ["*"]

[device.opcua]
endpoint = "{sub.opcua_endpoint}"
user = "plant"
password = "pw-plant"
mode = "poll"

[device.modbus]
host = "127.0.0.1"
port = {sub.modbus_port}
"""
        )
        (tmp_path / "bench.toml").write_text(SCENARIO)
        # run_scenario runs its own event loop: give it a thread, the servers stay on ours
        import asyncio

        res = await asyncio.to_thread(
            run_scenario, tmp_path / "bench.toml", out_dir=tmp_path / "out"
        )
    assert not res.error, res.error
    failed = [f"{c.name}: {c.message}" for c in res.checks if not c.passed]
    assert failed == []
    assert res.summary["field"]["links"]
    assert res.summary["timings"]["pace"]["pace"] == "realtime"
