"""Modbus/TCP Security over real loopback sockets: mutual TLS on the emulator's Modbus server
and the twin's Modbus link (pymodbus's TLS client), the role from the client certificate's
Modbus role extension (OID 1.3.6.1.4.1.50316.802.1), refusals audited."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess

import pytest
from pymodbus.client import AsyncModbusTcpClient

import grids
from hil.emulator import EmulatedSubstation
from hil.emulator.modbus_server import ModbusPolicy
from hil.errors import CommsLost, HilTimeout, ProtocolError
from hil.links.modbus import ModbusLink
from hil.security.certs import MODBUS_ROLE_OID, Pki, load_certificate, modbus_role_of
from hil.security.modbus_tls import ModbusTls
from twin.pointmap import generate_pointmap

pytestmark = [pytest.mark.usefixtures("no_task_leak"), pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbpki")
    made = {}
    for name, role in (("server", None), ("twin", "operator"), ("view", "viewer"),
                       ("stranger", "operator"), ("norole", None)):  # fmt: skip
        p = Pki(root / name)
        p.create(app_uri=f"urn:gridtwin:test:{name}", common_name=f"test {name}",
                 modbus_role=role)  # fmt: skip
        made[name] = p
    for name in ("twin", "view", "norole"):
        made["server"].trust(made[name].cert)
    for name in ("twin", "view", "stranger", "norole"):
        made[name].trust(made["server"].cert)
    return made


@pytest.fixture(scope="module")
def grid():
    net = grids.load("urban_district")
    return net, generate_pointmap(net, mode="hil")


def _valid(p) -> float:
    lo, hi = p.low if p.low is not None else 0.0, p.high if p.high is not None else 1.0
    return (lo + hi) / 2


def _points(pm):
    status = next(p for p in pm.points if p.modbus is not None and p.kind == "status"
                  and p.direction == "to_twin")  # fmt: skip
    setpoint = next(p for p in pm.points if p.modbus is not None and p.kind == "setpoint"
                    and p.modbus.table == "holding_register")  # fmt: skip
    return status, setpoint


async def _substation(grid, pki):
    net, pm = grid
    tls = ModbusTls.from_pki(pki["server"])
    sub = EmulatedSubstation(net, pm, devices=False, protocols=("modbus",),
                             modbus_policy=ModbusPolicy(tls=tls))  # fmt: skip
    await sub.start()
    return sub


def test_role_extension_round_trip(pki):
    cert = load_certificate(pki["twin"].cert)
    assert cert.extensions.get_extension_for_oid(MODBUS_ROLE_OID) is not None
    assert modbus_role_of(cert) == "operator"
    assert modbus_role_of(load_certificate(pki["norole"].cert)) is None


async def test_trusted_client_reads_and_writes_with_its_role(grid, pki):
    sub = await _substation(grid, pki)
    status, setpoint = _points(grid[1])
    link = ModbusLink("127.0.0.1", sub.modbus_port, [status, setpoint],
                      tls=ModbusTls.from_pki(pki["twin"]))  # fmt: skip
    try:
        await link.connect()
        await link.poll()
        assert link.read_inputs()[status.name].quality.is_good
        await link.write_point(setpoint.name, _valid(setpoint))
    finally:
        await link.close()
        await sub.stop()
    recs = [r for r in sub.modbus.audit.records() if r.point == setpoint.name]
    assert len(recs) == 1 and recs[0].result == "accepted", recs
    assert recs[0].role == "operator" and "CN=test twin" in recs[0].user
    assert recs[0].peer.startswith("127.0.0.1:")


async def test_viewer_certificate_reads_but_may_not_write(grid, pki):
    sub = await _substation(grid, pki)
    status, setpoint = _points(grid[1])
    for who in ("view", "norole"):  # no role extension: the default role, viewer
        link = ModbusLink("127.0.0.1", sub.modbus_port, [status, setpoint],
                          tls=ModbusTls.from_pki(pki[who]))  # fmt: skip
        try:
            await link.connect()
            await link.poll()
            assert link.read_inputs()[status.name].quality.is_good
            with pytest.raises(ProtocolError) as err:
                await link.write_point(setpoint.name, _valid(setpoint))
            assert err.value.code == 1
        finally:
            await link.close()
    await sub.stop()
    recs = [r for r in sub.modbus.audit.records() if r.result == "refused"]
    assert len(recs) == 2 and all("read only" in r.reason for r in recs), recs
    assert {r.role for r in recs} == {"viewer"}


async def test_untrusted_or_plain_clients_are_refused_and_audited(grid, pki):
    sub = await _substation(grid, pki)
    status, _ = _points(grid[1])
    try:
        stranger = ModbusLink("127.0.0.1", sub.modbus_port, [status], timeout_s=2.0,
                              tls=ModbusTls.from_pki(pki["stranger"]))  # fmt: skip
        try:
            # TLS 1.3: the client's handshake ends before the server checked its certificate,
            # so the refusal may only show on the first request (no answer, connection closed)
            with pytest.raises((CommsLost, HilTimeout)):
                await stranger.connect()
                await stranger.poll()
        finally:
            await stranger.close()
        plain = AsyncModbusTcpClient("127.0.0.1", port=sub.modbus_port, timeout=1, retries=0)
        await plain.connect()
        try:
            rr = await plain.read_discrete_inputs(status.modbus.address, count=1,
                                                  device_id=status.modbus.unit)  # fmt: skip
            assert rr.isError()
        except Exception:  # noqa: BLE001 - no answer or connection closed: refused either way
            pass
        finally:
            plain.close()
        for _ in range(100):  # the server notices the failed handshakes (bounded)
            refused = [r for r in sub.modbus.audit.records() if r.point == "(connection)"]
            if len(refused) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await sub.stop()
    assert len(refused) >= 2, refused
    assert all(r.result == "refused" and "TLS" in r.reason for r in refused)
    assert all(r.peer.startswith("127.0.0.1:") for r in refused)
    assert sub.modbus.stats["tls_refused"] >= 2


async def test_trusting_a_client_while_serving_lets_it_in(grid, pki, tmp_path):
    sub = await _substation(grid, pki)
    status, _ = _points(grid[1])
    late = Pki(tmp_path / "late")
    late.create(app_uri="urn:gridtwin:test:late", common_name="late", modbus_role="operator")
    late.trust(pki["server"].cert)
    try:
        link = ModbusLink("127.0.0.1", sub.modbus_port, [status], timeout_s=2.0,
                          tls=ModbusTls.from_pki(late))  # fmt: skip
        try:
            with pytest.raises((CommsLost, HilTimeout)):
                await link.connect()
                await link.poll()
        finally:
            await link.close()
        added = pki["server"].trust(late.cert)
        try:
            link = ModbusLink("127.0.0.1", sub.modbus_port, [status],
                              tls=ModbusTls.from_pki(late))  # fmt: skip
            try:
                await link.connect()
                await link.poll()
                assert link.read_inputs()[status.name].quality.is_good
            finally:
                await link.close()
        finally:
            added.unlink()
    finally:
        await sub.stop()


async def test_twin_link_refuses_an_untrusted_server(grid, pki, tmp_path):
    sub = await _substation(grid, pki)
    status, _ = _points(grid[1])
    lonely = Pki(tmp_path / "lonely")
    lonely.create(app_uri="urn:gridtwin:test:lonely", common_name="lonely",
                  modbus_role="operator")  # fmt: skip
    lonely.trust(pki["stranger"].cert)  # trusts someone, not this server
    link = ModbusLink("127.0.0.1", sub.modbus_port, [status], timeout_s=2.0,
                      tls=ModbusTls.from_pki(lonely))  # fmt: skip
    try:
        with pytest.raises(CommsLost, match="gridtwin certs trust"):
            await link.connect()
    finally:
        await link.close()
        await sub.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not on PATH")
async def test_openssl_s_client_sees_mutual_tls(grid, pki, tmp_path):
    """An independent TLS peer: openssl s_client with the trusted certificate completes the
    handshake (and sees the server ask for a client certificate)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    sub = await _substation(grid, pki)
    pem = tmp_path / "twin.pem"
    pem.write_bytes(load_certificate(pki["twin"].cert).public_bytes(Encoding.PEM))
    try:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{sub.modbus_port}",
            "-cert", str(pem), "-key", str(pki["twin"].key),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        await sub.stop()
    text = out.decode(errors="replace")
    assert "Acceptable client certificate CA names" in text or "Requested" in text, text
    assert "CN=test server" in text or "CN = test server" in text, text


def test_hardware_file_takes_a_modbus_tls_pki(pki, tmp_path):
    from hil.hardware import loads_hardware, make_links
    from twin.errors import ConfigError

    text = (
        f"[[device]]\nname='rtu'\n[device.modbus]\nhost='127.0.0.1'\nport=802\nwrite=true\n"
        f"tls_pki='{pki['twin'].root}'\n"
    )
    hw = loads_hardware(text, base=tmp_path)
    assert hw.devices[0].modbus.tls_pki == pki["twin"].root
    pm = generate_pointmap(grids.load("urban_district"), mode="hil")
    pm = dataclasses.replace(pm, points=tuple(p for p in pm.points if p.modbus is not None
                                              and p.modbus.table != "input_register"))  # fmt: skip
    (link,) = make_links(hw, pm)
    assert isinstance(link, ModbusLink) and link.tls is not None
    with pytest.raises(ConfigError, match="tls_pki"):
        loads_hardware(text.replace(str(pki["twin"].root), str(tmp_path / "nope")), base=tmp_path)
