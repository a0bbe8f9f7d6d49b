"""`gridtwin solve`: grid files as in scenarios, --flows with line/trafo flows and losses."""

from __future__ import annotations

import json
from pathlib import Path

import pandapower
import pytest

import grids
from scenarios.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    rc = main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_flows_and_losses_match_pandapower(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _json(capsys, "solve", "ieee14", "--flows", "--json", "--backend", "numpy")
    assert rc == 0 and out["converged"]
    ref = grids.load("ieee14")
    pandapower.runpp(ref, lightsim2grid=False)
    assert out["line"]["p_from_mw"] == pytest.approx(ref.res_line.p_from_mw.tolist(), abs=1e-6)
    assert out["trafo"]["loading_percent"] == pytest.approx(
        ref.res_trafo.loading_percent.tolist(), abs=1e-6
    )
    lo = out["losses"]
    assert lo["line_mw"] == pytest.approx(ref.res_line.pl_mw.sum(), abs=1e-6)
    assert lo["total_mvar"] == pytest.approx(
        ref.res_line.ql_mvar.sum() + ref.res_trafo.ql_mvar.sum(), abs=1e-6
    )


def test_a_grid_file_is_accepted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out = _json(capsys, "solve", str(DATA / "matpower" / "case3_v1.m"), "--json")
    assert rc == 0 and out["bus"]["index"] == [0, 1, 29] and "line" not in out
    js = tmp_path / "k.json"
    pandapower.to_json(grids.load("kerber_landnetz"), str(js))
    rc = main(["solve", str(js), "--flows"])
    text = capsys.readouterr().out
    assert rc == 0 and "line flows" in text and "trafo flows" in text and "losses: lines" in text


def test_bad_grid_file_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.m"
    bad.write_text("mpc.bus = [\n 1 3 0;\n")
    assert main(["solve", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:1: expected ']' closing mpc.bus" in err


def test_not_converged_is_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    net = grids.load("kerber_landnetz")
    net.load["p_mw"] *= 1000
    path = tmp_path / "heavy.json"
    pandapower.to_json(net, str(path))
    rc, out = _json(capsys, "solve", str(path), "--json", "--flows")
    assert rc == 1 and not out["converged"] and "losses" not in out
