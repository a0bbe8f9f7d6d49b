"""Fixtures of the scenario tests: a separate ``gridtwin emulate`` process reached through a
``hardware.toml``, as a user points a scenario at real hardware."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Start-up of a separate emulator (import pandapower, build the OPC UA address space).
_START_TIMEOUT_S = 90.0


@dataclass
class EmulatorProcess:
    """A running ``python -m scenarios.cli emulate`` process and where it serves."""

    proc: subprocess.Popen[str]
    opcua_endpoint: str
    modbus_port: int
    output: list[str]

    def hardware_toml(self, *, user: str = "plant", password: str = "pw-plant") -> str:
        """A hardware.toml with one device on both protocols (OPC UA polled)."""
        return f"""
[[device]]
name = "bench"
points = ["*"]

[device.opcua]
endpoint = "{self.opcua_endpoint}"
user = "{user}"
password = "{password}"
mode = "poll"
timeout_s = 2.0

[device.modbus]
host = "127.0.0.1"
port = {self.modbus_port}
timeout_s = 1.0
"""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_emulator(
    *args: str, grid: str = "urban_district", opcua_port: int = 0, modbus_port: int = 0
) -> EmulatorProcess:
    """Start a separate emulator process and wait (bounded) until it prints its ports."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "scenarios.cli",
        "emulate",
        "--grid",
        grid,
        "--opcua-port",
        str(opcua_port),
        "--modbus-port",
        str(modbus_port),
        "--duration",
        "900",
        "--insecure",  # None policy + passwords on the command line: loopback test only
        "--user",
        "plant:pw-plant:plant",
        "--user",
        "op:pw-op:operator",
        *args,
    ]
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - read while the process writes it
        "w+", prefix="gridtwin-emulate-", suffix=".log", delete=False
    )
    # a file, not a pipe: a pipe nobody drains would block the emulator once it fills
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    endpoint, port = "", 0
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        text = Path(log.name).read_text()
        out = text.splitlines(keepends=True)
        if m := re.search(r"OPC UA\s+(opc\.tcp://\S+)", text):
            endpoint = m.group(1)
        if m := re.search(r"Modbus\s+127\.0\.0\.1:(\d+)", text):
            port = int(m.group(1))
        if "\nserving" in text:
            break
        time.sleep(0.2)
    if not endpoint or not port:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("the emulator process did not start:\n" + "".join(out))
    log.close()
    return EmulatorProcess(proc, endpoint, port, out)


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    """One separate emulator of urban_district (both protocols) for the module's tests."""
    emu = start_emulator()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def emulator_starter() -> Iterator[Callable[..., EmulatorProcess]]:
    """``start(*args, **kw)`` of further emulator processes, stopped at the end of the test."""
    started: list[EmulatorProcess] = []

    def start(*args: str, **kw: object) -> EmulatorProcess:
        emu = start_emulator(*args, **kw)  # type: ignore[arg-type]
        started.append(emu)
        return emu

    yield start
    for emu in started:
        emu.stop()
