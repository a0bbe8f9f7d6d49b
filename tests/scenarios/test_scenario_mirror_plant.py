"""Mirror mode against a separate plant process: ``gridtwin run plant.toml --serve`` computes
its measurements from its own load flow and takes a bias injected from the command line
(``--inject``); a second twin in mirror mode, reaching it through a hardware.toml over both
protocols, raises a divergence alarm that names the biased meter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scenarios.engine import run_scenario

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PLANT = """
name = "plant"
grid = "urban_district"
hardware = "emulated"
links = ["direct"]
start = "12:00"
duration = "150s"
step = "1s"
seed = 3

[[check]]
kind = "converged"
"""

MIRROR = """
name = "mirror"
grid = "urban_district"
hardware = "hardware.toml"
mode = "mirror"
start = "12:00"
duration = "45s"
step = "1s"
pace = "realtime"

[[check]]
name = "alarm_names_the_biased_meter"
kind = "expect_alarm"
point = "N3.vm_pu"
"""


def test_mirror_finds_a_bias_injected_into_a_separate_plant(tmp_path: Path) -> None:
    from hil.security.certs import Pki

    (tmp_path / "plant.toml").write_text(PLANT)
    # the served plant is secure (issue 11): each side trusts the other's certificate
    plant_pki, mirror_pki = Pki(tmp_path / "plant-pki"), Pki(tmp_path / "mirror-pki")
    plant_pki.create(app_uri="urn:gridtwin:test:plant", common_name="plant")
    mirror_pki.create(app_uri="urn:gridtwin:test:mirror", common_name="mirror")
    plant_pki.trust(mirror_pki.cert)
    mirror_pki.trust(plant_pki.cert)
    log = tmp_path / "plant.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "scenarios.cli",
        "run",
        str(tmp_path / "plant.toml"),
        "--serve",
        "--no-progress",
        "--out",
        str(tmp_path / "plant-out"),
        "--inject",
        "meas_bias:N3.vm_pu=0.05@+40s",
        "--pki",
        str(plant_pki.root),
    ]
    with open(log, "w") as fh:
        plant = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        text = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and plant.poll() is None:
            text = log.read_text()
            if "serving opcua_user" in text:
                break
            time.sleep(0.2)
        ua = re.search(r"serving opcua: (\S+)", text)
        mb = re.search(r"serving modbus: 127\.0\.0\.1:(\d+)", text)
        user = re.search(r"serving opcua_user: (\S+) / (\S+)", text)
        assert ua and mb and user, text
        (tmp_path / "hardware.toml").write_text(
            f"""
[[device]]
name = "plant"
[device.opcua]
endpoint = "{ua.group(1)}"
user = "{user.group(1)}"
password = "{user.group(2)}"
security = "Basic256Sha256"
certificate = "{mirror_pki.cert}"
private_key = "{mirror_pki.key}"
server_trust = "{mirror_pki.trusted}"
mode = "poll"
[device.modbus]
host = "127.0.0.1"
port = {mb.group(1)}
"""
        )
        (tmp_path / "mirror.toml").write_text(MIRROR)
        res = run_scenario(tmp_path / "mirror.toml", out_dir=tmp_path / "mirror-out")
    finally:
        plant.terminate()
        plant.wait(timeout=60)
    assert res.error == "", res.error
    assert [c.message for c in res.checks if not c.passed] == []
    import csv

    with open(tmp_path / "mirror-out" / "alarms.csv", newline="") as fh:
        alarms = list(csv.DictReader(fh))
    # the biased meter and nothing else: the plant's own load flow agrees with the estimate
    assert alarms and {a["point"] for a in alarms} == {"N3.vm_pu"}
    assert all(abs(float(a["field_value"]) - float(a["twin_value"]) - 0.05) < 0.01 for a in alarms)
