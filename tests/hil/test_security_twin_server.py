"""Issue 11, over real loopback sockets: the twin's OPC UA server and the served substation of a
run are secure by default, the twin's link checks the server's certificate, the embedded link
can sign and encrypt, and every write lands in the run's audit with its peer.

Certificates and users are made with the project's tools (as ``gridtwin certs`` does); the
outside clients are plain asyncua clients.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadCertificateUntrusted, UaError

import grids
from hil.emulator.opcua_server import OpcuaServer
from hil.errors import ProtocolError
from hil.field import EmulatedField
from hil.field.base import Field, SimClock
from hil.field.local import LocalField
from hil.links.opcua import OpcuaLink
from hil.security.certs import OpcuaSecurity, Pki
from hil.security.run import RunSecurity
from hil.security.users import add_user, load_users
from hil.store import PointStore
from scenarios.engine import make_model

pytestmark = [pytest.mark.usefixtures("no_task_leak"), pytest.mark.timeout(300)]
TIMEOUT = 10.0
PEER = re.compile(r"^127\.0\.0\.1:\d+$")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The twin's PKI (trusting ``client``), a stranger, and a users file."""
    root = tmp_path_factory.mktemp("pki")
    twin, client, stranger = Pki(root / "twin"), Pki(root / "client"), Pki(root / "stranger")
    twin.create(app_uri="urn:gridtwin:test:twin", common_name="test twin")
    client.create(app_uri="urn:gridtwin:test:client", common_name="test client")
    stranger.create(app_uri="urn:gridtwin:test:stranger", common_name="stranger")
    twin.trust(client.cert)
    users = root / "users.toml"
    add_user(users, "op", "operator", "op-secret")
    add_user(users, "view", "viewer", "view-secret")
    return {"twin": twin, "client": client, "stranger": stranger, "users": users}


@pytest.fixture(scope="module")
def net():
    return grids.load("urban_district")


def _field(net, **kw) -> EmulatedField:
    return EmulatedField(net=net, model=make_model(net), mode="hil", recorder=None,
                         clock=SimClock(0.0), seed=1, **kw)  # fmt: skip


async def _steps(fld: EmulatedField, n: int) -> None:
    for t in range(n):
        fld.clock.t = float(t)
        out = await fld.step(float(t))
        assert out.converged, out.error


async def _client(
    endpoint: str,
    who: Pki,
    user: tuple[str, str] | None,
    *,
    policy: str = "Basic256Sha256",
    mode: str = "SignAndEncrypt",
) -> Client:
    c = Client(endpoint, timeout=TIMEOUT)
    c.application_uri = who.app_uri()
    if user is not None:
        c.set_user(user[0])
        c.set_password(user[1])
    await c.set_security_string(f"{policy},{mode},{who.cert},{who.key}")
    await c.connect()
    return c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_twin_server_of_a_run_is_secure_by_default(pki, net):
    """SignAndEncrypt + a user of the users file reads; no None endpoint, no anonymous token,
    loopback only; an unknown client certificate gets BadCertificateUntrusted; a write attempt
    is refused and audited with its peer."""
    sec = RunSecurity(pki=pki["twin"].root, users=pki["users"])
    fld = _field(net, links=["direct"], twin_server_port=0, security=sec)
    await fld.start()
    try:
        await _steps(fld, 3)
        srv = fld.twin_server
        assert srv.endpoint.startswith("opc.tcp://127.0.0.1:")
        c = await _client(srv.endpoint, pki["client"], ("view", "view-secret"))
        try:
            assert await c.get_node(srv.node_id("Twin/Stats/Steps")).read_value() == 3
            endpoints = await c.get_endpoints()
            policies = {e.SecurityPolicyUri.rsplit("#", 1)[-1] for e in endpoints}
            assert policies == {"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"}
            assert ua.MessageSecurityMode.None_ not in {e.SecurityMode for e in endpoints}
            tokens = {t.TokenType for e in endpoints for t in e.UserIdentityTokens}
            assert tokens == {ua.UserTokenType.UserName}
            assert all("127.0.0.1" in e.EndpointUrl for e in endpoints)
            node = c.get_node(srv.node_id("Twin/Stats/Time_s"))
            with pytest.raises(UaError):
                await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
        finally:
            await c.disconnect()
        with pytest.raises(BadCertificateUntrusted):
            await _client(srv.endpoint, pki["stranger"], ("view", "view-secret"))
        with pytest.raises(UaError):  # a trusted certificate but a wrong password
            await _client(srv.endpoint, pki["client"], ("view", "wrong"))
    finally:
        await fld.stop()
    refused = [r for r in fld.audit.records() if r.protocol == "opcua-twin"]
    assert len(refused) == 1 and refused[0].result == "refused"
    assert PEER.match(refused[0].peer) and refused[0].user.startswith("view")


async def test_twin_server_one_time_login_without_users_file(net):
    """No --pki, no --users: a one-time certificate and one generated viewer login (shown in
    the endpoints), still no None policy and no anonymous session."""
    fld = _field(net, links=["direct"], twin_server_port=0, security=None)
    await fld.start()
    try:
        await _steps(fld, 1)
        ends = fld.endpoints()
        user, _, rest = ends["twin_server_user"].partition(" / ")
        password = rest.split(" ")[0]
        one_time = Pki(Path(ends["trusted_clients"]).parent)
        assert "None" not in ends["opcua_security"]
        # an outside client of the run: trusted with `gridtwin certs trust` into the run's PKI
        client = Pki(one_time.root.parent / "outside")
        client.create(app_uri="urn:gridtwin:test:outside", common_name="outside")
        one_time.trust(client.cert)
        c = await _client(fld.twin_server.endpoint, client, (user, password))
        try:
            assert await c.get_node(fld.twin_server.node_id("Twin/Stats/Steps")).read_value() == 1
        finally:
            await c.disconnect()
        anon = Client(fld.twin_server.endpoint, timeout=TIMEOUT)
        with pytest.raises(UaError):  # the None policy is not offered
            await anon.connect()
    finally:
        await fld.stop()
    assert not Path(ends["trusted_clients"]).exists()  # one-time: removed with the run


async def test_insecure_twin_server_only_on_request(net):
    fld = _field(net, links=["direct"], twin_server_port=0, security=RunSecurity(insecure=True))
    await fld.start()
    try:
        await _steps(fld, 1)
        async with Client(fld.twin_server.endpoint, timeout=TIMEOUT) as c:  # anonymous, None
            assert await c.get_node(fld.twin_server.node_id("Twin/Stats/Steps")).read_value() == 1
    finally:
        await fld.stop()


async def test_served_substation_reads_writes_with_sign_and_encrypt_and_audits(pki, net):
    """--serve: the substation an outside controller reaches is as secure as the twin's server;
    the twin's own OPC UA link then signs and encrypts with a one-time certificate. An
    outside operator from the users file reads and writes a set point over SignAndEncrypt;
    every write, the twin's own included, is audited with its peer and user."""
    sec = RunSecurity(pki=pki["twin"].root, users=pki["users"])
    fld = _field(net, links=["modbus", "opcua"], serve=(0, 0), twin_server_port=0, security=sec)
    await fld.start()
    try:
        await _steps(fld, 2)
        opcua = next(lk for lk in fld.links if lk.protocol == "opcua")
        assert opcua.connected and "SignAndEncrypt" in opcua.security
        setpoint = next(p.name for p in fld.pointmap.points if p.kind == "setpoint")
        for policy in ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"):
            c = await _client(fld.sub.opcua_endpoint, pki["client"], ("op", "op-secret"),
                              policy=policy)  # fmt: skip
            try:
                node = c.get_node(fld.sub.node_id(setpoint))
                dv = await node.read_data_value()
                await node.write_value(
                    ua.DataValue(ua.Variant(dv.Value.Value, dv.Value.VariantType))
                )
            finally:
                await c.disconnect()
        c = await _client(fld.twin_server.endpoint, pki["client"], ("view", "view-secret"))
        try:
            assert await c.get_node(fld.twin_server.node_id("Twin/Stats/Steps")).read_value() == 2
        finally:
            await c.disconnect()
        with pytest.raises(BadCertificateUntrusted):
            await _client(fld.sub.opcua_endpoint, pki["stranger"], ("op", "op-secret"))
        with pytest.raises(UaError):  # the None policy is not offered
            async with Client(fld.sub.opcua_endpoint, timeout=TIMEOUT):
                pass
    finally:
        await fld.stop()
    recs = fld.audit.records()
    outside = [r for r in recs if r.user.startswith("op ") and r.point == setpoint]
    assert len(outside) == 3 and all(r.result == "accepted" for r in outside)
    assert all("CN=test client" in r.user and r.role == "operator" for r in outside)
    twin_own = [r for r in recs if r.user.startswith(("plant", "operator"))]
    assert twin_own and {r.protocol for r in twin_own} >= {"opcua"}
    assert all(PEER.match(r.peer) for r in recs), {r.peer for r in recs}


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_embedded_link_signs_on_request(net, mode):
    """Without --serve the embedded emulator's link is loopback with one-time passwords; with
    --embedded-security Sign/SignAndEncrypt both ends get one-time certificates trusting only
    each other, and the emulator offers no None endpoint."""
    fld = _field(net, links=["opcua"], security=RunSecurity(embedded=mode))
    await fld.start()
    try:
        await _steps(fld, 2)
        link = fld.links[0]
        assert link.connected and f"Basic256Sha256,{mode}," in link.security
        assert link.server_trust is not None
        probe = Client(fld.sub.opcua_endpoint, timeout=TIMEOUT)
        with pytest.raises(UaError):  # the None policy is not offered
            await probe.connect()
    finally:
        await fld.stop()
    recs = fld.audit.records()
    assert recs and {r.protocol for r in recs} == {"opcua"}
    assert all(PEER.match(r.peer) and "CN=gridtwin link" in r.user for r in recs)


async def test_twin_link_refuses_an_untrusted_server_and_names_it(pki, tmp_path):
    """hil/links/opcua.py with a trust list (server_trust): a server certificate not in it is
    refused before any login, the error names subject, thumbprint and the command; the
    certificate is saved to rejected/; trusting it lets the link in."""
    from hil.security.certs import fingerprint, load_certificate
    from tests.hil.test_security_opcua import pointmap

    store = PointStore(pointmap())
    store.set("pv1.p_mw", 0.02)
    srv = OpcuaServer(store, port=_free_port(), users=load_users(pki["users"]),
                      security=OpcuaSecurity.from_pki(pki["twin"]))  # fmt: skip
    mine = Pki(tmp_path / "link")
    mine.create(app_uri="urn:gridtwin:test:client", common_name="test client")
    pki["twin"].trust(mine.cert)
    await srv.start()
    try:
        sec = f"Basic256Sha256,SignAndEncrypt,{mine.cert},{mine.key}"
        link = OpcuaLink(srv.endpoint, [store.pointmap["pv1.p_mw"]], user="view",
                         password="view-secret", security=sec, server_trust=mine.trusted,
                         namespace="urn:gridtwin:substation", mode="poll")  # fmt: skip
        with pytest.raises(ProtocolError) as err:
            await link.connect()
        await link.close()
        text = str(err.value)
        thumb = fingerprint(load_certificate(pki["twin"].cert))
        assert err.value.code == "BadCertificateUntrusted"
        assert thumb in text and "CN=test twin" in text and "gridtwin certs trust" in text
        rejected = list((mine.root / "rejected").glob("*.der"))
        assert len(rejected) == 1 and str(rejected[0]) in text
        mine.trust(rejected[0])
        link = OpcuaLink(srv.endpoint, [store.pointmap["pv1.p_mw"]], user="view",
                         password="view-secret", security=sec, server_trust=mine.trusted,
                         namespace="urn:gridtwin:substation", mode="poll")  # fmt: skip
        try:
            await link.connect()
            await link.poll()
            assert link.read_inputs()["pv1.p_mw"].value == 0.02
        finally:
            await link.close()
    finally:
        await srv.stop()


def test_every_field_has_an_audit(net):
    assert LocalField(model=None).audit is None
    fld = _field(net, links=["direct"])
    assert isinstance(fld, Field)
    assert fld.audit is None  # until start: the substation's log


def test_hardware_file_reads_server_trust_and_every_policy(tmp_path):
    from hil.hardware import loads_hardware
    from twin.errors import ConfigError

    (tmp_path / "trusted").mkdir()
    for name in ("twin.der", "twin.pem"):
        (tmp_path / name).write_text("x")
    base = (
        "[[device]]\nname='rtu'\n[device.opcua]\nendpoint='opc.tcp://h:4840'\n"
        "security='Aes256Sha256RsaPss'\ncertificate='twin.der'\nprivate_key='twin.pem'\n"
    )
    hw = loads_hardware(base + "server_trust='trusted'\n", base=tmp_path)
    op = hw.devices[0].opcua
    assert op.server_trust == tmp_path / "trusted" and op.security == "Aes256Sha256RsaPss"
    with pytest.raises(ConfigError, match="server_trust.*folder"):
        loads_hardware(base + "server_trust='nope'\n", base=tmp_path)
