"""``gridtwin certs`` and the secure default of ``gridtwin emulate``, as a user runs them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import struct
import sys
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadCertificateUntrusted
from pymodbus.client import AsyncModbusTcpClient

from hil.security.audit import read_audit
from hil.security.certs import Pki
from scenarios.cli import main

pytestmark = pytest.mark.usefixtures("no_task_leak")
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def test_certs_commands_make_a_pki_trust_a_peer_and_add_a_hashed_user(tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    server, client = tmp_path / "server", tmp_path / "client"
    assert main(["certs", "create", "--pki", str(server), "--uri", "urn:x:server"]) == 0
    assert main(["certs", "create", "--pki", str(client), "--name", "my client"]) == 0
    assert main(["certs", "create", "--pki", str(server)]) == 2  # no silent overwrite
    assert "exists already" in capsys.readouterr().err
    assert (server / "own" / "key.pem").stat().st_mode & 0o077 == 0
    assert main(["certs", "trust", str(client / "own" / "cert.der"), "--pki", str(server)]) == 0
    assert len(list((server / "trusted").glob("*.der"))) == 1
    assert main(["certs", "trust", str(tmp_path / "nothing.der"), "--pki", str(server)]) == 2
    monkeypatch.setenv("GT_PW", "s3cret-pw")
    users = tmp_path / "users.toml"
    args = ["certs", "add-user", "op", "--role", "operator", "--users", str(users)]
    assert main([*args, "--password-env", "GT_PW"]) == 0
    text = users.read_text()
    assert "s3cret-pw" not in text and "scrypt$" in text
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text("other-pw\n")
    assert main([*args[:2], "plant", "--role", "plant", "--users", str(users),
                 "--password-file", str(pwfile)]) == 0  # fmt: skip
    from hil.security.users import load_users

    loaded = load_users(users)
    assert loaded["op"].check("s3cret-pw") and not loaded["op"].check("other-pw")
    assert loaded["plant"].role == "plant" and loaded["plant"].check("other-pw")
    # a password on the command line is not an option
    with pytest.raises(SystemExit):
        main([*args, "--password", "x"])


def test_emulate_refuses_a_password_on_the_command_line(capsys):
    assert main(["emulate", "--grid", "ieee9", "--user", "op:pw:operator", "--duration", "0"]) == 2
    assert "visible in `ps`" in capsys.readouterr().err


def test_emulate_names_a_bad_allow_list_entry(capsys):
    assert main(["emulate", "--grid", "ieee9", "--modbus-allow", "10.0.0.300", "--duration",
                 "0"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "expected an IP address or network" in err and "10.0.0.300" in err


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scenarios.cli", "emulate", "--grid", "ieee9",
        "--opcua-port", "0", "--modbus-port", "0", "--duration", "120", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    async with asyncio.timeout(120):
        while True:
            raw = await proc.stdout.readline()
            assert raw, "emulate exited early: " + "".join(lines)
            lines.append(raw.decode())
            if raw.startswith(b"serving"):
                break
    return proc, "".join(lines), lines


async def test_secure_emulate_end_to_end_with_audit(tmp_path):
    server, client, stranger = Pki(tmp_path / "s"), Pki(tmp_path / "c"), Pki(tmp_path / "x")
    server.create(app_uri="urn:gridtwin:emulator")
    client.create(app_uri="urn:gridtwin:scada")
    stranger.create(app_uri="urn:gridtwin:stranger")
    server.trust(client.cert)
    users = tmp_path / "users.toml"
    from hil.security.users import add_user

    add_user(users, "plant", "plant", "plant-pw")
    audit = tmp_path / "audit.jsonl"
    proc, text, _ = await _start(
        "--pki", str(server.root), "--users", str(users), "--audit", str(audit)
    )
    try:
        assert "None" not in text.split("OPC UA security:")[1].splitlines()[0]
        assert f"audit   {audit}" in text
        endpoint = re.search(r"OPC UA\s+(opc\.tcp://\S+)", text).group(1)
        mb_port = int(re.search(r"Modbus\s+127\.0\.0\.1:(\d+)", text).group(1))
        ua_client = Client(endpoint, timeout=TIMEOUT)
        ua_client.set_user("plant")
        ua_client.set_password("plant-pw")
        await ua_client.set_security_string(
            f"Aes128Sha256RsaOaep,SignAndEncrypt,{client.cert},{client.key}"
        )
        async with ua_client:
            ns = await ua_client.get_namespace_index("urn:gridtwin:substation")
            objects = ua_client.nodes.objects
            ss = (await objects.get_children())[-1]
            bay = (await ss.get_children())[0]
            elem = (await bay.get_children())[0]
            var = (await elem.get_children())[0]
            assert var.nodeid.NamespaceIndex == ns
            dv = await var.read_data_value()
            await var.write_value(ua.Variant(dv.Value.Value, dv.Value.VariantType))
            written = var.nodeid.to_string()
        stranger_client = Client(endpoint, timeout=TIMEOUT)
        await stranger_client.set_security_string(
            f"Basic256Sha256,SignAndEncrypt,{stranger.cert},{stranger.key}"
        )
        with pytest.raises(BadCertificateUntrusted):
            await stranger_client.connect()
        await stranger_client.disconnect()
        mb = AsyncModbusTcpClient("127.0.0.1", port=mb_port, timeout=TIMEOUT, retries=0)
        assert await mb.connect()
        try:  # the operator role over Modbus may not write a measurement: 02
            words = list(struct.unpack(">HH", struct.pack(">f", 1.0)))
            rr = await mb.write_registers(0, words, device_id=1)
            assert rr.isError() and rr.exception_code == 2
        finally:
            mb.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    recs = read_audit(audit)
    ua_rec = next(r for r in recs if r["protocol"] == "opcua")
    assert ua_rec["result"] == "accepted" and ua_rec["user"].startswith("plant [CN=gridtwin")
    assert ua_rec["peer"].startswith("127.0.0.1:") and ua_rec["new"] is not None
    assert written.rsplit("/", 1)[-1] == ua_rec["point"].split(".", 1)[1]
    mb_rec = next(r for r in recs if r["protocol"] == "modbus")
    assert mb_rec["result"] == "refused" and mb_rec["peer"].startswith("127.0.0.1:")
