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


CASE9_M = """function mpc = case9
mpc.version = '2';
mpc.baseMVA = 100;
mpc.bus = [
	1	3	0	0	0	0	1	1	0	345	1	1.1	0.9;
	2	2	0	0	0	0	1	1	0	345	1	1.1	0.9;
	3	2	0	0	0	0	1	1	0	345	1	1.1	0.9;
	4	1	0	0	0	0	1	1	0	345	1	1.1	0.9;
	5	1	90	30	0	0	1	1	0	345	1	1.1	0.9;
	6	1	0	0	0	0	1	1	0	345	1	1.1	0.9;
	7	1	100	35	0	0	1	1	0	345	1	1.1	0.9;
	8	1	0	0	0	0	1	1	0	345	1	1.1	0.9;
	9	1	125	50	0	0	1	1	0	345	1	1.1	0.9;
];
mpc.gen = [
{gens}
];
mpc.branch = [
	1	4	0	0.0576	0	250	250	250	0	0	1	-360	360;
	4	5	0.017	0.092	0.158	250	250	250	0	0	1	-360	360;
	5	6	0.039	0.17	0.358	150	150	150	0	0	1	-360	360;
	3	6	0	0.0586	0	300	300	300	0	0	1	-360	360;
	6	7	0.0119	0.1008	0.209	150	150	150	0	0	1	-360	360;
	7	8	0.0085	0.072	0.149	250	250	250	0	0	1	-360	360;
	8	2	0	0.0625	0	250	250	250	0	0	1	-360	360;
	8	9	0.032	0.161	0.306	250	250	250	0	0	1	-360	360;
	9	4	0.01	0.085	0.176	250	250	250	0	0	1	-360	360;
];
""".format(
    gens="\n".join(
        "\t" + "\t".join([*row, "100", "1", pmax, "10"] + ["0"] * 11) + ";"
        for row, pmax in (
            (("1", "72.3", "27.03", "300", "-300", "1.04"), "250"),
            (("2", "163", "6.54", "300", "-300", "1.025"), "300"),
            (("3", "85", "-10.95", "300", "-300", "1.025"), "270"),
        )
    )
)


def test_a_matpower_grid_file_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "case9.m").write_text(CASE9_M)
    f = tmp_path / "s.toml"
    f.write_text('grid = "case9.m"\nduration = "2min"\nstep = "1min"\n')
    assert main(["validate", str(f)]) == 0


def test_a_grid_file_of_another_kind_is_refused_naming_the_kinds(tmp_path: Path, capsys) -> None:
    (tmp_path / "g.xlsx").write_text("x")
    f = tmp_path / "s.toml"
    f.write_text('grid = "g.xlsx"\nduration = "2min"\nstep = "1min"\n')
    assert main(["validate", str(f)]) == 2
    assert "g.xlsx" in capsys.readouterr().err
