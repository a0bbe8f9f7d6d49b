"""Scenarios checked against their grid, and ``gridtwin validate`` exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

import grids
from scenarios.cli import main
from scenarios.config import loads_scenario
from scenarios.validate import assert_against_grid, check_against_grid
from twin.errors import ConfigError

BASE = 'grid = "urban_district"\nduration = "1h"\nstep = "1min"\n'


@pytest.fixture(scope="module")
def net():
    return grids.load("urban_district")


def test_valid_scenario_has_no_problems(net) -> None:
    sc = loads_scenario(BASE + '[[event]]\nkind = "switch_open"\nelement = "Q12"\nat = 60\n')
    assert check_against_grid(sc, net) == []


def test_unknown_elements_are_named_with_suggestions(net) -> None:
    sc = loads_scenario(
        BASE
        + '[[event]]\nkind = "switch_open"\nelement = "Q13"\nat = 60\n'
        + '[[check]]\nkind = "voltage_band"\nbuses = ["N99"]\n'
        + '[[profile]]\ntable = "load"\nmatch = "NOPE_*"\nshape = "residential"\n',
        path=Path("grid.toml"),
    )
    problems = check_against_grid(sc, net)
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert "event[0].element" in joined and "'Q13'" in joined and "did you mean" in joined
    assert "check[0].buses" in joined and "'N99'" in joined
    assert "profile[0].match" in joined and "NOPE_*" in joined
    with pytest.raises(ConfigError, match="3 problem"):
        assert_against_grid(sc, net)


def test_field_events_need_hardware(net) -> None:
    sc = loads_scenario(
        BASE + 'hardware = "none"\n[[event]]\nkind = "comms_loss"\ntarget = "x"\nat = 5\n'
    )
    assert any("acts on field devices" in p for p in check_against_grid(sc, net))


def test_validate_cli_exit_codes(tmp_path: Path, capsys) -> None:
    lib = Path(__file__).resolve().parents[2] / "scenarios" / "library"
    assert main(["validate", str(lib / "city_day.toml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + '[[event]]\nkind = "switch_open"\nelement = "QX"\nat = 60\n')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "QX" in err
