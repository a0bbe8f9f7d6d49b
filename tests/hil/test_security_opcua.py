"""OPC UA security over real loopback sockets: the emulator's server and the twin's server.

Certificates, trust lists and users are made with the project's own tools (hil.security, as
``gridtwin certs`` does); the clients are plain asyncua clients.
"""

from __future__ import annotations

import math
import socket

import pandapower.networks as pn
import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadCertificateUntrusted, BadUserAccessDenied, UaError

from hil.emulator.opcua_server import OpcuaServer
from hil.security.audit import AuditLog
from hil.security.certs import OpcuaSecurity, Pki
from hil.security.users import LoginGuard, add_user, load_users
from hil.store import PointStore
from hil.twin_server import TwinServer
from twin.pointmap import OpcuaBinding, Point, PointMap
from twin.quality import Quality

pytestmark = pytest.mark.usefixtures("no_task_leak")
TIMEOUT = 10.0
POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")


def _pt(name, kind, *, low=None, high=None):
    label, col = name.split(".")
    path = ("SS1", f"BAY_{label}", label, col)
    return Point(
        name=name,
        table="sgen",
        column=col,
        element=0,
        direction="to_field" if kind in ("command", "setpoint") else "to_twin",
        kind=kind,
        low=low,
        high=high,
        opcua=OpcuaBinding("ns=2;s=" + "/".join(path), path),
    )


def pointmap() -> PointMap:
    return PointMap(
        points=(_pt("pv1.p_mw", "measurement"), _pt("pv1.max_p_mw", "setpoint", low=0, high=1))
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Server, trusted client and untrusted client PKI folders, and a users file."""
    root = tmp_path_factory.mktemp("pki")
    server, client, stranger = Pki(root / "server"), Pki(root / "client"), Pki(root / "stranger")
    server.create(app_uri="urn:gridtwin:test:server", common_name="test server")
    client.create(app_uri="urn:gridtwin:test:client", common_name="test client")
    stranger.create(app_uri="urn:gridtwin:test:stranger", common_name="stranger")
    server.trust(client.cert)
    users = root / "users.toml"
    add_user(users, "op", "operator", "op-secret")
    add_user(users, "view", "viewer", "view-secret")
    return {"server": server, "client": client, "stranger": stranger, "users": users}


def _client(endpoint, who: Pki, policy="Basic256Sha256", mode="SignAndEncrypt", user=None):
    c = Client(endpoint, timeout=TIMEOUT)
    c.application_uri = who.app_uri()
    if user is not None:
        c.set_user(user[0])
        c.set_password(user[1])
    return c, f"{policy},{mode},{who.cert},{who.key}"


async def _connect(endpoint, who, **kw) -> Client:
    c, sec = _client(endpoint, who, **kw)
    await c.set_security_string(sec)
    await c.connect()
    return c


async def test_secure_emulator_reads_writes_audits_and_refuses_strangers(pki):
    store = PointStore(pointmap())
    store.set("pv1.p_mw", 0.02)
    store.set("pv1.max_p_mw", 1.0)
    audit = AuditLog()
    srv = OpcuaServer(
        store,
        port=_free_port(),
        users=load_users(pki["users"]),
        security=OpcuaSecurity.from_pki(pki["server"]),
        audit=audit,
    )
    await srv.start()
    try:
        ep = srv.endpoint
        # every policy in SignAndEncrypt, and Sign: read and write as the operator
        combos = [(p, "SignAndEncrypt") for p in POLICIES] + [("Basic256Sha256", "Sign")]
        for i, (policy, mode) in enumerate(combos):
            c = await _connect(ep, pki["client"], policy=policy, mode=mode,
                               user=("op", "op-secret"))  # fmt: skip
            try:
                assert await c.get_node(srv.node_id("pv1.p_mw")).read_value() == 0.02
                value = 0.5 + i / 10
                await c.get_node(srv.node_id("pv1.max_p_mw")).write_value(value)
                assert store.value("pv1.max_p_mw") == value
                # an operator may not write a measurement: refused and audited
                with pytest.raises(BadUserAccessDenied):
                    await c.get_node(srv.node_id("pv1.p_mw")).write_value(5.0)
            finally:
                await c.disconnect()
        recs = audit.records()
        assert [r.result for r in recs[:2]] == ["accepted", "refused"]
        assert len(recs) == 2 * len(combos)
        first = recs[0]
        assert first.protocol == "opcua" and first.peer.startswith("127.0.0.1:")
        assert first.user.startswith("op [CN=test client")
        assert (first.point, first.old, first.new) == ("pv1.max_p_mw", 1.0, 0.5)
        assert recs[1].point == "pv1.p_mw" and "measurement" in recs[1].reason

        # quality -> status code, over the encrypted channel
        c = await _connect(ep, pki["client"], user=("view", "view-secret"))
        try:
            node = c.get_node(srv.node_id("pv1.p_mw"))
            for quality, value, code in (
                (Quality.COMMS_LOST, 0.02, ua.StatusCodes.BadCommunicationError),
                (Quality.STALE, 0.02, ua.StatusCodes.UncertainLastUsableValue),
                (Quality.INVALID, math.nan, ua.StatusCodes.BadSensorFailure),
                (Quality.GOOD, 0.03, ua.StatusCodes.Good),
            ):
                store.set("pv1.p_mw", value, quality=quality)
                dv = await node.read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value == code, (quality, dv.StatusCode)
        finally:
            await c.disconnect()

        # an unknown client certificate: BadCertificateUntrusted
        with pytest.raises(BadCertificateUntrusted):
            await _connect(ep, pki["stranger"], user=("op", "op-secret"))
        # no None endpoint, no anonymous session
        with pytest.raises(UaError):
            async with Client(ep, timeout=TIMEOUT):
                pass
        c, sec = _client(ep, pki["client"])
        await c.set_security_string(sec)
        with pytest.raises(UaError):
            await c.connect()
        await c.disconnect()
    finally:
        await srv.stop()


async def test_failed_logins_back_off_and_trust_is_read_again(pki, tmp_path):
    server = Pki(tmp_path / "server")
    server.create(app_uri="urn:gridtwin:test:server2")
    store = PointStore(pointmap())
    srv = OpcuaServer(store, port=_free_port(), users=load_users(pki["users"]),
                      security=OpcuaSecurity.from_pki(server))  # fmt: skip
    now = [0.0]
    srv.user_manager.guard = LoginGuard(clock=lambda: now[0])
    await srv.start()
    try:
        # the client is not trusted by this server yet; `certs trust` works without a restart
        with pytest.raises(BadCertificateUntrusted):
            await _connect(srv.endpoint, pki["client"], user=("op", "op-secret"))
        server.trust(pki["client"].cert)
        for _ in range(3):
            with pytest.raises(BadUserAccessDenied):
                await _connect(srv.endpoint, pki["client"], user=("op", "wrong"))
        # locked now: even the right password is refused until the lock has passed
        with pytest.raises(BadUserAccessDenied):
            await _connect(srv.endpoint, pki["client"], user=("op", "op-secret"))
        assert srv.user_manager.guard.refused_locked == 1
        now[0] += 1.5
        c = await _connect(srv.endpoint, pki["client"], user=("op", "op-secret"))
        await c.disconnect()
    finally:
        await srv.stop()


async def test_secure_twin_server_reads_and_audits_refused_writes(pki):
    net = pn.example_simple()
    srv = TwinServer(
        net,
        port=_free_port(),
        users=load_users(pki["users"]),
        security=OpcuaSecurity.from_pki(pki["server"]),
    )
    async with srv:
        c = await _connect(srv.endpoint, pki["client"], policy="Aes256Sha256RsaPss",
                           user=("view", "view-secret"))  # fmt: skip
        try:
            node = c.get_node(srv.node_id("Twin/Stats/Steps"))
            assert await node.read_value() == 0
            with pytest.raises(UaError):
                await node.write_value(ua.Variant(5, ua.VariantType.Int64))
        finally:
            await c.disconnect()
        with pytest.raises(BadCertificateUntrusted):
            await _connect(srv.endpoint, pki["stranger"], user=("view", "view-secret"))
    rec = srv.audit.records()[-1]
    assert (rec.protocol, rec.result, rec.point) == (
        "opcua-twin",
        "refused",
        "ns=2;s=Twin/Stats/Steps",
    )
    assert rec.peer.startswith("127.0.0.1:") and rec.user.startswith("view [CN=test client")


def test_twin_server_refuses_nosecurity_off_loopback():
    from hil.errors import HilError

    with pytest.raises(HilError, match="not loopback"):
        TwinServer(pn.example_simple(), host="0.0.0.0")


async def test_idle_connections_cannot_lock_a_client_out(pki):
    """The probe: 1000 idle connections refused a legitimate client for 30 s. At the cap a new
    connection closes the oldest one without a session."""
    import asyncio

    store = PointStore(pointmap())
    store.set("pv1.p_mw", 0.02)
    srv = OpcuaServer(
        store,
        port=_free_port(),
        users=load_users(pki["users"]),
        security=OpcuaSecurity.from_pki(pki["server"]),
        max_connections=5,
    )
    await srv.start()
    idle = []
    try:
        for _ in range(12):
            idle.append(await asyncio.open_connection("127.0.0.1", srv.port))
        c = await _connect(srv.endpoint, pki["client"], user=("view", "view-secret"))
        try:
            assert await c.get_node(srv.node_id("pv1.p_mw")).read_value() == 0.02
        finally:
            await c.disconnect()
        closed = 0
        for reader, _w in idle:
            try:
                data = await asyncio.wait_for(reader.read(10), 0.5)
            except TimeoutError:
                continue
            closed += data == b""
        assert closed >= 12 - 5 + 1  # the oldest idle ones made room
    finally:
        for _r, w in idle:
            w.close()
        await srv.stop()


async def test_twin_server_serves_a_point_not_good_with_its_bad_status():
    from types import SimpleNamespace

    from twin.quality import Sample

    srv = TwinServer(pn.example_simple(), pointmap(), port=_free_port())
    async with srv:
        async with Client(srv.endpoint, timeout=TIMEOUT) as c:
            node = c.get_node(srv.node_id("Twin/Points/pv1.p_mw/Value"))
            for quality, code in (
                (Quality.COMMS_LOST, ua.StatusCodes.BadCommunicationError),
                (Quality.STALE, ua.StatusCodes.UncertainLastUsableValue),
                (Quality.GOOD, ua.StatusCodes.Good),
            ):
                loop = SimpleNamespace(samples={"pv1.p_mw": Sample(0.02, quality, 0.0)})
                await srv.publish(loop, SimpleNamespace(converged=False), None)
                dv = await node.read_data_value(raise_on_bad_status=False)
                assert dv.StatusCode.value == code, (quality, dv.StatusCode)


async def test_the_twin_link_pins_the_server_certificate(pki):
    """hil/links/opcua.py with a security string naming the server's certificate (5th field):
    the right server is accepted, another one (or a man in the middle) is refused."""
    from hil.errors import HilError
    from hil.links.opcua import OpcuaLink

    store = PointStore(pointmap())
    store.set("pv1.p_mw", 0.02)
    srv = OpcuaServer(store, port=_free_port(), users=load_users(pki["users"]),
                      security=OpcuaSecurity.from_pki(pki["server"]))  # fmt: skip
    await srv.start()
    try:
        inputs = [store.pointmap["pv1.p_mw"]]
        client = pki["client"]
        base = f"Basic256Sha256,SignAndEncrypt,{client.cert},{client.key}"
        ns = "urn:gridtwin:substation"
        right = f"{base},{pki['server'].cert}"
        link = OpcuaLink(srv.endpoint, inputs, user="view", password="view-secret",
                         security=right, namespace=ns, mode="poll")  # fmt: skip
        try:
            await link.connect()
            await link.poll()
            assert link.read_inputs()["pv1.p_mw"].value == 0.02
        finally:
            await link.close()
        wrong = OpcuaLink(srv.endpoint, inputs, user="view", password="view-secret",
                          security=f"{base},{pki['stranger'].cert}", namespace=ns, mode="poll",
                          timeout_s=2.0)  # fmt: skip
        with pytest.raises(HilError):
            await wrong.connect()
        await wrong.close()
    finally:
        await srv.stop()
