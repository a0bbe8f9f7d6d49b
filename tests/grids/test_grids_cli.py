"""`gridtwin grids list | show | import` through scenarios.cli.main."""

from __future__ import annotations

from pathlib import Path

import pytest

import grids
from scenarios.cli import main

CASE2 = """function mpc = case2
mpc.version = '2';
mpc.baseMVA = 100;
mpc.bus = [
	1	3	0	0	0	0	1	1.0	0	BASEKV	1	1.1	0.9;
	2	1	10	2	0	0	1	1.0	0	BASEKV	1	1.1	0.9;
];
mpc.gen = [
	1	0	0	100	-100	1.0	100	1	200	0;
];
mpc.branch = [
	1	2	0.01	0.05	0.02	100	100	100	0	0	1	-360	360;
];
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_list_shows_every_grid_with_counts_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "grids", "list")
    assert rc == 0
    rows = [line for line in out.splitlines() if any(n in line for n in grids.names())]
    assert len(grids.names()) >= 14
    for name in grids.names():
        row = next(r for r in rows if f" {name} " in r)
        info = grids.info(name)
        assert str(info.buses) in row and str(info.lines) in row, row
        assert info.short_source in row, row
    for source in ("MATPOWER", "PEGASE", "CIGRE", "Kerber", "pandapower", "synthetic"):
        assert source in out
    assert "urban_district (synthetic)" in out


def test_show_prints_source_levels_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "grids", "show", "urban_district", "--rows", "3")
    assert rc == 0
    assert "source: Synthetic" in out
    assert "110 kV (1 buses), 22 kV (9 buses), 0.4 kV (71 buses)" in out
    for title in ("bus (first 3 of 81)", "line (first 3 of 72)", "load (first 3 of 92)"):
        assert title in out
    assert "HV_110" in out and "L_SS1_N1" in out and "MV_OTHER_FEEDERS" in out
    assert "N3" not in out.split("line (first")[0].split("bus (first")[1]  # only 3 bus rows


def test_show_unknown_grid_is_an_error_listing_names(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "grids", "show", "atlantis")
    assert rc == 2
    assert "unknown grid 'atlantis'" in err and "urban_district" in err


def test_import_then_list_and_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gridtwin_home: Path
) -> None:
    case = tmp_path / "case2.m"
    case.write_text(CASE2.replace("BASEKV", "22"), encoding="utf-8")
    rc, out, _ = _run(capsys, "grids", "import", str(case), "--name", "tiny")
    assert rc == 0
    assert "tiny" in out and "bus=2" in out
    assert (gridtwin_home / "grids" / "tiny.json").is_file()
    rc, out, _ = _run(capsys, "grids", "list")
    assert rc == 0 and "tiny (user)" in out
    rc, out, _ = _run(capsys, "grids", "show", "tiny")
    assert rc == 0 and "22 kV (2 buses)" in out


def test_import_failure_reports_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gridtwin_home: Path
) -> None:
    case = tmp_path / "case2.m"
    case.write_text(CASE2.replace("BASEKV", "0"), encoding="utf-8")
    rc, _, err = _run(capsys, "grids", "import", str(case), "--name", "tiny")
    assert rc == 2
    assert str(case) in err and "baseKV" in err
    assert not (gridtwin_home / "grids" / "tiny.json").exists()
    rc, _, err = _run(capsys, "grids", "import", str(case), "--name", "ieee14")
    assert rc == 2 and "bundled grid" in err


def test_grids_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "grids")
    assert rc == 2
    assert "list" in out and "import" in out


def test_show_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "grids", "show", "urban_district", "--rows", "1")
    assert rc == 0
    for title in (
        "bus (first 1",
        "line (",
        "trafo (",
        "switch (",
        "load (",
        "sgen (",
        "ext_grid (",
    ):
        assert title in out, title
    assert "category" in out and "load by category: residential 57" in out
    rc, out, _ = _run(capsys, "grids", "show", "urban_district", "--table", "trafo", "--all")
    assert rc == 0 and "trafo (first 9 of 9)" in out and "tap_step_percent" in out
    assert "bus (" not in out
    rc, _, err = _run(capsys, "grids", "show", "urban_district", "--table", "trafos")
    assert rc == 2 and "expected one of the grid's tables" in err


def test_import_twice_refuses_without_force(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, gridtwin_home: Path
) -> None:
    case = tmp_path / "case2.m"
    case.write_text(CASE2.replace("BASEKV", "22"), encoding="utf-8")
    assert _run(capsys, "grids", "import", str(case), "--name", "tiny")[0] == 0
    rc, _, err = _run(capsys, "grids", "import", str(case), "--name", "tiny")
    assert rc == 2 and "already exists" in err and "--force" in err
    assert _run(capsys, "grids", "import", str(case), "--name", "tiny", "--force")[0] == 0


def test_export_formats_and_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for fmt, name in (("json", "k.json"), ("matpower", "k.m"), ("csv", "k_csv")):
        out = tmp_path / name
        rc, text, _ = _run(
            capsys, "grids", "export", "kerber_landnetz", "--format", fmt, "--out", str(out)
        )
        assert rc == 0 and out.exists() and str(out) in text
        rc, _, err = _run(
            capsys, "grids", "export", "kerber_landnetz", "--format", fmt, "--out", str(out)
        )
        assert rc == 2 and "--force" in err
    rc, out, _ = _run(capsys, "grids", "show", str(tmp_path / "k.m"))
    assert rc == 0 and "(file, not imported)" in out
