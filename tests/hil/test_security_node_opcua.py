"""node-opcua (another OPC UA stack) against the secure emulator server: untrusted, then trusted.

Needs ``node`` and the packages of ``tests/hil/node_opcua/package.json`` (``npm ci --prefix
tests/hil/node_opcua``, or ``NODE_PATH`` pointing at a node_modules holding them); skipped
with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from hil.emulator.opcua_server import OpcuaServer
from hil.security.certs import OpcuaSecurity, Pki
from hil.security.users import add_user, load_users
from hil.store import PointStore
from twin.pointmap import OpcuaBinding, Point, PointMap

HERE = Path(__file__).parent / "node_opcua"


def _node_env() -> dict[str, str] | None:
    if shutil.which("node") is None:
        return None
    paths = [p for p in os.environ.get("NODE_PATH", "").split(os.pathsep) if p]
    paths.append(str(HERE / "node_modules"))
    for p in paths:
        if (Path(p) / "node-opcua-client").is_dir():
            return dict(os.environ, NODE_PATH=os.pathsep.join(paths))
    return None


ENV = _node_env()
pytestmark = [
    pytest.mark.usefixtures("no_task_leak"),
    pytest.mark.skipif(
        ENV is None and not os.environ.get("GRIDTWIN_REQUIRE_NODE_OPCUA"),
        reason="node or node-opcua-client missing (npm install --prefix tests/hil/node_opcua)",
    ),
]


async def _probe(endpoint: str, pki: Path, nid: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(HERE / "probe.js"), endpoint, str(pki), "op", "op-pw", nid,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return int(proc.returncode or 0), out.decode()


async def test_node_opcua_untrusted_is_refused_then_trusted_reads(tmp_path):
    point = Point(
        name="pv1.p_mw", table="sgen", column="p_mw", element=0, direction="to_twin",
        kind="measurement", opcua=OpcuaBinding("ns=2;s=SS1/pv1/p_mw", ("SS1", "pv1", "p_mw")),
    )  # fmt: skip
    store = PointStore(PointMap(points=(point,)))
    store.set("pv1.p_mw", 0.02)
    server = Pki(tmp_path / "server")
    server.create(app_uri="urn:gridtwin:test:server")
    add_user(tmp_path / "users.toml", "op", "operator", "op-pw")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = OpcuaServer(store, port=port, users=load_users(tmp_path / "users.toml"),
                      security=OpcuaSecurity.from_pki(server))  # fmt: skip
    await srv.start()
    try:
        nid = srv.node_id("pv1.p_mw").to_string()
        node_pki = tmp_path / "node"
        rc, out = await _probe(srv.endpoint, node_pki, nid)  # a fresh self-signed certificate
        assert rc == 3 and "BadCertificateUntrusted" in out, out
        server.trust(node_pki / "own" / "certs" / "client_certificate.pem")
        rc, out = await _probe(srv.endpoint, node_pki, nid)
        assert rc == 0 and "READ Good 0.02" in out, out
    finally:
        await srv.stop()


async def test_node_opcua_and_the_twin_server_of_a_run(tmp_path):
    """The twin's server as ``gridtwin run --twin-server --pki --users`` makes it: node-opcua
    with an unknown certificate is refused, trusted it reads over SignAndEncrypt."""
    import grids
    from hil.field import EmulatedField
    from hil.field.base import SimClock
    from hil.security.run import RunSecurity
    from scenarios.engine import make_model

    twin = Pki(tmp_path / "twin")
    twin.create(app_uri="urn:gridtwin:test:twin")
    add_user(tmp_path / "users.toml", "op", "viewer", "op-pw")
    net = grids.load("urban_district")
    sec = RunSecurity(pki=twin.root, users=tmp_path / "users.toml")
    fld = EmulatedField(net=net, model=make_model(net), mode="hil", links=["direct"],
                        recorder=None, clock=SimClock(0.0), seed=1, twin_server_port=0,
                        security=sec)  # fmt: skip
    await fld.start()
    try:
        assert (await fld.step(0.0)).converged
        srv = fld.twin_server
        nid = f"ns={srv.ns};s=Twin/Stats/Steps"
        node_pki = tmp_path / "node"
        rc, out = await _probe(srv.endpoint, node_pki, nid)
        assert rc == 3 and "BadCertificateUntrusted" in out, out
        twin.trust(node_pki / "own" / "certs" / "client_certificate.pem")
        rc, out = await _probe(srv.endpoint, node_pki, nid)
        # Steps is an Int64: node-opcua shows it as [high, low] 32-bit words
        assert rc == 0 and re.search(r"READ Good (0,)?1\b", out), out
    finally:
        await fld.stop()
