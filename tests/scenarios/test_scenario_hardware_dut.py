"""A device under test that is itself a Modbus server: the twin writes its measurement points
to the device's holding registers during a ``gridtwin run`` (real sockets, 127.0.0.1), and an
output no link of the hardware file can write is refused by ``validate`` and before ``run``."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from scenarios.engine import run_scenario
from scenarios.validate import validate_file
from twin.errors import ConfigError
from twin.pointmap import decode_registers, load_pointmap
from twin.recorder import read_timeseries

#: bus N2's voltage and line L_N1_N2's current in holding registers 0 and 2 (float32)
POINTMAP = """
substation = "DUT"

[[point]]
name = "N2.vm_pu"
bind = 'bus.vm_pu["N2"]'
direction = "to_field"
kind = "measurement"
[point.modbus]
table = "{table}"
address = 0

[[point]]
name = "L_N1_N2.i_ka"
bind = 'line.i_ka["L_N1_N2"]'
direction = "to_field"
kind = "measurement"
[point.modbus]
table = "{table}"
address = 2
"""

HARDWARE = """
pointmap = "pointmap.toml"

[[device]]
name = "dut"
[device.modbus]
host = "127.0.0.1"
port = {port}
write = true
read = false
"""

SCENARIO = """
name = "dut"
grid = "urban_district"
hardware = "hardware.toml"
start = "12:00"
duration = "2s"
step = "0.5s"
pace = "realtime"

[record]
quantities = ["bus.vm_pu[N2]", "line.i_ka[L_N1_N2]"]
setpoints = false

[[event]]
kind = "load_step"
match = "*"
factor = 1.5
at = "+1s"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(tmp_path: Path, *, port: int, table: str) -> Path:
    (tmp_path / "pointmap.toml").write_text(POINTMAP.format(table=table), encoding="utf-8")
    (tmp_path / "hardware.toml").write_text(HARDWARE.format(port=port), encoding="utf-8")
    (tmp_path / "dut.toml").write_text(SCENARIO, encoding="utf-8")
    return tmp_path / "dut.toml"


@pytest.mark.timeout(120)
async def test_a_modbus_server_under_test_receives_its_measurements(tmp_path: Path) -> None:
    port = _free_port()
    f = _files(tmp_path, port=port, table="holding_register")
    sc, problems = validate_file(f)
    assert problems == []
    device = SimDevice(
        id=1,
        simdata=(
            [SimData(0, count=8, values=False, datatype=DataType.BITS)],  # coils
            [SimData(0, count=8, values=False, datatype=DataType.BITS)],  # discrete inputs
            [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)],  # holding
            [SimData(0, count=8, values=0, datatype=DataType.REGISTERS)],  # input
        ),
    )
    server = ModbusTcpServer([device], address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        # run_scenario runs its own event loop: a thread; the device under test stays on ours
        res = await asyncio.to_thread(run_scenario, f, out_dir=tmp_path / "out")
        regs = await server.context.async_getValues(1, 3, 0, 4)
    finally:
        await server.shutdown()
    assert res.error == "", res.error
    links = res.summary["field"]["links"]
    assert list(links) == [f"modbus:127.0.0.1:{port}"], links
    assert links[f"modbus:127.0.0.1:{port}"]["writes"] > 0, links
    pm = load_pointmap(tmp_path / "pointmap.toml")
    got_v = decode_registers(pm["N2.vm_pu"], regs[0:2])
    got_i = decode_registers(pm["L_N1_N2.i_ka"], regs[2:4])
    ts = read_timeseries(tmp_path / "out")
    # the device holds what the twin computed at the last step (after the load step)
    assert got_v == pytest.approx(ts["bus.vm_pu[N2]"].iloc[-1], abs=1e-6)
    assert got_i == pytest.approx(ts["line.i_ka[L_N1_N2]"].iloc[-1], rel=1e-6)
    assert 0.8 < got_v < 1.1 and got_i > ts["line.i_ka[L_N1_N2]"].iloc[0]


def test_an_output_no_link_can_write_is_refused_by_validate(tmp_path: Path) -> None:
    # measurements in input registers: Modbus cannot write those, and there is no OPC UA
    f = _files(tmp_path, port=_free_port(), table="input_register")
    _, problems = validate_file(f)
    assert len(problems) == 1, problems
    assert "hardware.toml" in problems[0] and "none can write" in problems[0]
    assert "'N2.vm_pu'" in problems[0] and "input_register" in problems[0]
    with pytest.raises(ConfigError, match="none can write"):  # before the run starts
        run_scenario(f, out_dir=tmp_path / "out")
