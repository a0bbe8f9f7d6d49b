"""hardware.toml parsing, the point split between links, and open_links on the emulator."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from hil.emulator.substation import EmulatedSubstation
from hil.errors import HilError, OutOfRange, WriteRejected
from hil.hardware import (
    HardwareConfig,
    default_hardware,
    load_hardware,
    loads_hardware,
    make_links,
    open_links,
    plan_links,
)
from hil.links.modbus import ModbusLink
from hil.links.opcua import OpcuaLink
from twin.errors import ConfigError
from twin.pointmap import generate_pointmap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")

DOC = Path(__file__).resolve().parents[2] / "docs" / "hardware.md"

FULL = """
pointmap = "points.toml"
stale_policy = "refuse"
stale_factor = 4
backoff_min_s = 0.5
backoff_max_s = 10

[[device]]
name = "RTU1"
points = ["*"]

[device.opcua]
endpoint = "opc.tcp://10.20.0.5:4840/gridtwin/"
user = "twin"
password_env = "RTU1_PW"
security = "Basic256Sha256"
security_mode = "Sign"
certificate = "certs/twin.der"
private_key = "certs/twin.pem"
mode = "subscription"
sampling_interval_s = 0.25
namespace = "urn:gridtwin:substation"

[device.modbus]
host = "10.20.0.5"
port = 1502
units = [1, 2]
timeout_s = 0.5
max_gap = 2
"""


@pytest.fixture
def files(tmp_path):
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "twin.der").write_bytes(b"x")
    (tmp_path / "certs" / "twin.pem").write_bytes(b"x")
    (tmp_path / "points.toml").write_text("# placeholder\n")
    return tmp_path


def _write(dirpath: Path, text: str) -> Path:
    p = dirpath / "hardware.toml"
    p.write_text(text)
    return p


# --- parsing ---------------------------------------------------------------------------------
def test_full_file(files):
    cfg = load_hardware(_write(files, FULL), env={"RTU1_PW": "s3cret"})
    assert cfg.stale_policy == "refuse" and cfg.stale_factor == 4.0
    assert cfg.pointmap == files / "points.toml"
    (dev,) = cfg.devices
    assert dev.name == "RTU1" and dev.points == ("*",)
    op, mb = dev.opcua, dev.modbus
    assert op.password == "s3cret" and "s3cret" not in repr(cfg)
    assert op.security_string() == (
        f"Basic256Sha256,Sign,{files / 'certs/twin.der'},{files / 'certs/twin.pem'}"
    )
    assert op.sampling_interval_s == 0.25 and op.mode == "subscription"
    assert (mb.host, mb.port, mb.units, mb.timeout_s, mb.max_gap) == (
        "10.20.0.5",
        1502,
        (1, 2),
        0.5,
        2,
    )
    assert mb.read and not mb.write and op.write and op.read is None


def test_minimal_defaults(tmp_path):
    cfg = loads_hardware('[[device]]\n[device.modbus]\nhost = "127.0.0.1"\n', base=tmp_path)
    (dev,) = cfg.devices
    assert dev.modbus.port == 502 and dev.opcua is None and cfg.stale_policy == "hold"
    assert cfg.pointmap is None and cfg.stale_factor is None


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("colour = 1\n[[device]]\n[device.modbus]\nhost='h'", "colour", "allowed keys"),
        ("stale_policy = 'maybe'\n[[device]]\n[device.modbus]\nhost='h'", "stale_policy",
         "hold, refuse"),
        ("[[device]]\n[device.modbus]\nhost='h'\nport=70000", "device[0].modbus.port", "1..65535"),
        ("[[device]]\n[device.modbus]\nhost='h'\nunits=[1,'x']", "device[0].modbus.units",
         "unit ids"),
        ("[[device]]\n[device.modbus]\nhost='h'\ntimeout_s=0", "device[0].modbus.timeout_s", "> 0"),
        ("[[device]]\n[device.modbus]\nhost='h'\nparity='E'", "device[0].modbus.parity",
         "allowed keys"),
        ("[[device]]\n[device.opcua]\nendpoint='http://x'", "device[0].opcua.endpoint", "opc.tcp"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\nsecurity='Basic128Rsa15'",
         "device[0].opcua.security", "None, Basic256Sha256"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\nmode='push'",
         "device[0].opcua.mode", "subscription, poll"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\nsecurity='Basic256Sha256'"
         "\ncertificate='nope.der'\nprivate_key='nope.pem'", "device[0].opcua.certificate",
         "existing file"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\nuser='u'\npassword_env='NOPE'",
         "device[0].opcua.password_env", "NOPE"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\npassword='p'",
         "device[0].opcua.user", "needs a user"),
        ("[[device]]\n[device.opcua]\nendpoint='opc.tcp://h:4840'\nsampling_interval_s=true",
         "device[0].opcua.sampling_interval_s", "seconds"),
        ("[[device]]\nname='a'", "device[0].opcua", "needs an"),
        ("[[device]]\nname='a'\n[device.modbus]\nhost='h'\n[[device]]\nname='a'\n"
         "[device.modbus]\nhost='h'", "device[1].name", "unique"),
        ("stale_policy = 'hold'", "device", "at least one"),
        ("[[device]\n", "(syntax)", "valid TOML"),
    ],
)  # fmt: skip
def test_errors_name_file_key_and_allowed(tmp_path, text, key, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_hardware(path, env={})
    msg = str(ei.value)
    assert str(path) in msg and fragment in msg, msg
    assert ei.value.key == key


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="readable file"):
        load_hardware(tmp_path / "absent.toml")


def test_example_in_docs_parses(tmp_path):
    """The example in docs/hardware.md is a valid file (certificates stubbed)."""
    text = DOC.read_text()
    example = text.split("```toml", 1)[1].split("```", 1)[0]
    (tmp_path / "pki").mkdir()
    for name in ("gridtwin-client.der", "gridtwin-client.pem", "rtu-ss1.der"):
        (tmp_path / "pki" / name).write_bytes(b"x")
    (tmp_path / "ss1-points.toml").write_text("# stub\n")
    cfg = loads_hardware(example, base=tmp_path, env={"GRIDTWIN_RTU_PASSWORD": "pw"})
    assert cfg.devices and cfg.devices[0].opcua and cfg.devices[0].modbus


# --- which link carries which point ----------------------------------------------------------
@pytest.fixture(scope="module")
def pm(feeder_net):
    return generate_pointmap(feeder_net("hw-test"), mode="hil")


def _split(cfg: HardwareConfig, pm):
    return {(p.device, p.protocol): {q.name for q in p.points} for p in plan_links(cfg, pm)}


def test_default_split(pm):
    split = _split(default_hardware(), pm)
    mb, op = split[("emulated", "modbus")], split[("emulated", "opcua")]
    to_twin = {p.name for p in pm.points if p.direction == "to_twin"}
    to_field = {p.name for p in pm.points if p.direction == "to_field"}
    assert mb == to_twin  # every to_twin point has a Modbus binding in a generated map
    assert op == to_field
    assert "Q1.closed" in mb and "Q1.cmd" in op and "LD1.p_mw" in op


def test_an_output_no_link_can_write_is_refused(tmp_path, pm):
    # Modbus writes coils/holding registers only; with OPC UA writes off, L1's measurements
    # (input registers) would be dropped silently: the file is refused, naming one
    text = """
[[device]]
name = "relay"
points = ["Q1.*", "L1.*"]
[device.modbus]
host = "127.0.0.1"
write = true
[device.opcua]
endpoint = "opc.tcp://127.0.0.1:4840/"
write = false
"""
    with pytest.raises(ConfigError, match=r"device\[0\].*none can write.*'L1\.") as exc:
        plan_links(loads_hardware(text, base=tmp_path), pm)
    assert "input_register" in str(exc.value)


def test_split_options(tmp_path, pm):
    # (the device carries L1's setpoints, not its measurements: see the test above)
    text = """
[[device]]
name = "relay"
points = ["Q1.*", "L1.oc_*"]
[device.modbus]
host = "127.0.0.1"
write = true
read = false
[device.opcua]
endpoint = "opc.tcp://127.0.0.1:4840/"
read = true
write = false
"""
    split = _split(loads_hardware(text, base=tmp_path), pm)
    mb, op = split[("relay", "modbus")], split[("relay", "opcua")]
    assert all(n.startswith(("Q1.", "L1.")) for n in mb | op)
    assert "Q1.cmd" in mb and "Q1.closed" not in mb  # commands over Modbus, no reads
    assert "Q1.closed" in op and "Q1.cmd" not in op
    assert not any(pm[n].direction == "to_field" for n in op)


def test_double_writer_refused(tmp_path, pm):
    text = """
[[device]]
name = "a"
[device.opcua]
endpoint = "opc.tcp://127.0.0.1:4840/"
[[device]]
name = "b"
points = ["Q1.*"]
[device.opcua]
endpoint = "opc.tcp://127.0.0.1:4841/"
"""
    with pytest.raises(ConfigError, match="Q1.cmd"):
        plan_links(loads_hardware(text, base=tmp_path), pm)


def test_unmatched_device_points(tmp_path, pm):
    text = '[[device]]\npoints = ["nothing*"]\n[device.modbus]\nhost = "127.0.0.1"\n'
    with pytest.raises(ConfigError, match=r"device\[0\]\.points"):
        plan_links(loads_hardware(text, base=tmp_path), pm)


def test_unbound_emulator_ports_refused(pm):
    with pytest.raises(ConfigError, match="bind_emulator"):
        make_links(default_hardware(), pm)


def test_make_links_passes_settings(pm):
    cfg = default_hardware(password="pw").bind_emulator("opc.tcp://127.0.0.1:4999/gridtwin/", 5999)
    links = make_links(cfg, pm)
    mb = next(lk for lk in links if isinstance(lk, ModbusLink))
    op = next(lk for lk in links if isinstance(lk, OpcuaLink))
    assert (mb.host, mb.port, mb.polled) == ("127.0.0.1", 5999, True)
    assert op.endpoint.endswith(":4999/gridtwin/") and op.user == "plant"
    assert op.namespace == pm.namespace and not op.polled
    assert mb.stale_factor == pm.stale_factor


# --- open_links against the emulated substation ----------------------------------------------
PLANT = {"plant": ("plant-pw", "plant")}


async def test_open_links_on_emulator(feeder_net, pm):
    before = asyncio.all_tasks()
    async with EmulatedSubstation(feeder_net("hw-test"), pm, users=PLANT, devices=False) as sub:
        cfg = default_hardware(password="plant-pw").bind_emulator(
            sub.opcua_endpoint, sub.modbus_port
        )
        links = await open_links(cfg, pm)
        try:
            mb = next(lk for lk in links if isinstance(lk, ModbusLink))
            op = next(lk for lk in links if isinstance(lk, OpcuaLink))
            assert mb.connected and op.connected
            sub.store.set("Q1.closed", 0.0)
            await mb.poll()
            s = mb.read_inputs()
            assert s["Q1.closed"].quality is Quality.GOOD and s["Q1.closed"].value == 0.0
            tap = s["T1.tap_pos"]
            assert tap.quality is Quality.GOOD and tap.value == sub.store.value("T1.tap_pos")
            # the twin injects computed measurements over OPC UA, logged in as plant
            meas = {p.name: 1.0 + i / 100 for i, p in enumerate(op.outputs)
                    if p.kind == "measurement"}  # fmt: skip
            meas = {n: v for n, v in meas.items() if _in_limits(pm[n], v)}
            await op.write_outputs(meas)
            for n, v in meas.items():
                assert sub.store.value(n) == pytest.approx(v, rel=1e-6), n
            assert op.stats["writes"] == 1
            # and a Modbus master sees them in the input registers
            with pytest.raises(WriteRejected):
                await op.write_outputs({"Q1.closed": 1.0})
            with pytest.raises(OutOfRange):
                await op.write_point("Q1.cmd", math.nan)
        finally:
            for lk in links:
                await lk.close()
    await asyncio.sleep(0.05)
    leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leaked, leaked


def _in_limits(p, v):
    return (p.low is None or v >= p.low) and (p.high is None or v <= p.high)


async def test_open_links_wrong_password_fails_cleanly(feeder_net, pm):
    async with EmulatedSubstation(feeder_net("hw-test"), pm, users=PLANT, devices=False) as sub:
        cfg = default_hardware(password="wrong").bind_emulator(sub.opcua_endpoint, sub.modbus_port)
        with pytest.raises(HilError) as ei:
            await open_links(cfg, pm)
        assert "opcua" in str(ei.value)
