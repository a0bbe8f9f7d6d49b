"""``gridtwin solve``: table and JSON output through scenarios.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pandapower as pp
import pytest

import grids
from scenarios.cli import main


def test_loadflow_cli_solve_json_matches_pandapower(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "ieee14", "--backend", "numpy", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"converged", "iterations", "bus"}
    assert out["converged"] is True and out["iterations"] >= 1
    assert out["backend"] == "numpy"
    ref = grids.load("ieee14")
    pp.runpp(ref, lightsim2grid=False)
    assert out["bus"]["index"] == list(ref.bus.index)
    np.testing.assert_allclose(out["bus"]["vm_pu"], ref.res_bus.vm_pu, atol=1e-6)
    np.testing.assert_allclose(out["bus"]["va_degree"], ref.res_bus.va_degree, atol=1e-4)


def test_loadflow_cli_solve_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "ieee9"]) == 0
    text = capsys.readouterr().out
    assert "converged=True" in text and "vm_pu" in text


def test_loadflow_cli_unknown_grid_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "no_such_grid", "--json"]) == 2
    assert "no_such_grid" in capsys.readouterr().err
