"""Issue 11: the audit log of a bundled scenario run holds every write with its peer.

``relay_trip_modbus`` runs the twin against the embedded emulator over real loopback sockets:
measurements over OPC UA (as the plant), the operator's ring closing (Q45) over Modbus. Its
results folder keeps ``audit.jsonl``: one JSON line per write attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hil.security.audit import read_audit
from scenarios.cli.scenarios_cmd import find_bundled
from scenarios.config import load_scenario
from scenarios.engine import run_scenario

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PEER = re.compile(r"^127\.0\.0\.1:\d+$")


def test_bundled_run_audits_every_protocol_write_with_its_peer(tmp_path: Path) -> None:
    path = find_bundled("relay_trip_modbus")
    assert path is not None
    sc = load_scenario(path)
    res = run_scenario(sc, out_dir=tmp_path / "out")
    assert res.error == "", res.error
    recs = read_audit(tmp_path / "out" / "audit.jsonl")
    assert recs, "no audit record"
    assert {r["protocol"] for r in recs} == {"opcua", "modbus"}
    for r in recs:
        assert PEER.match(r["peer"]), r
        assert r["result"] in ("accepted", "refused") and r["point"], r
        assert isinstance(r["time"], float) and "old" in r and "new" in r, r
        if r["protocol"] == "opcua":
            assert r["user"].startswith("plant") and r["role"] == "plant", r
    # the operator's command went over Modbus: there, with its peer
    q45 = [r for r in recs if r["protocol"] == "modbus" and r["point"] == "Q45.cmd"]
    assert [r["result"] for r in q45] == ["accepted"], q45
    assert q45[0]["new"] == 1.0
    # every point the twin writes over OPC UA (the plant's measurements) is in the audit
    import grids
    from hil.hardware import emulated_hardware, plan_links
    from twin.pointmap import generate_pointmap

    pm = generate_pointmap(grids.load(sc.grid), mode="hil")
    plans = plan_links(emulated_hardware(sc.links), pm)
    written_over_opcua = {
        p.name
        for plan in plans
        if plan.protocol == "opcua"
        for p in plan.points
        if p.direction == "to_field" and not (p.table == "sgen" and p.column == "p_avail_mw")
    }
    audited = {r["point"] for r in recs if r["protocol"] == "opcua" and r["result"] == "accepted"}
    assert written_over_opcua and written_over_opcua <= audited, sorted(
        written_over_opcua - audited
    )[:10]
