"""grids.import_file: MATPOWER and pandapower JSON in, user grid folder out; failures write none."""

from __future__ import annotations

from pathlib import Path

import pandapower
import pytest
from pandapower.toolbox import nets_equal

import grids
from twin.errors import GridDataError, GridFileError

CASE3 = """function mpc = case3
%CASE3  Three-bus case for the gridtwin importer tests.
mpc.version = '2';
mpc.baseMVA = 100;
%% bus data
%	bus_i	type	Pd	Qd	Gs	Bs	area	Vm	Va	baseKV	zone	Vmax	Vmin
mpc.bus = [
	1	3	0	0	0	0	1	1.02	0	BASEKV	1	1.1	0.9;
	2	1	40	10	0	0	1	1	0	BASEKV	1	1.1	0.9;
	3	2	20	5	0	0	1	1.01	0	BASEKV	1	1.1	0.9;
];
%% generator data
%	bus	Pg	Qg	Qmax	Qmin	Vg	mBase	status	Pmax	Pmin
mpc.gen = [
	1	0	0	100	-100	1.02	100	1	200	0;
	3	30	0	50	-50	1.01	100	1	60	0;
];
%% branch data
%	fbus	tbus	r	x	b	rateA	rateB	rateC	ratio	angle	status	angmin	angmax
mpc.branch = [
	1	2	0.01	0.05	0.02	100	100	100	0	0	1	-360	360;
	2	3	0.01	0.05	0.02	100	100	100	0	0	1	-360	360;
	1	3	0.02	0.08	0.03	100	100	100	0	0	1	-360	360;
];
"""


def _user_files(home: Path) -> list[str]:
    folder = home / "grids"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_pandapower_json_round_trip(tmp_path: Path, gridtwin_home: Path) -> None:
    original = grids.load("cigre_mv")
    path = tmp_path / "mine.json"
    pandapower.to_json(original, str(path))
    returned = grids.import_file(path, "my_cigre")
    assert _user_files(gridtwin_home) == ["my_cigre.json"]
    assert "my_cigre" in grids.names()
    assert grids.names()[: len(grids.registry.SPECS)] == list(grids.registry.SPECS)
    loaded = grids.load("my_cigre")
    assert loaded is not returned
    extra = ["gridtwin_source", "gridtwin_description"]  # the import adds its citation
    assert nets_equal(original, loaded, check_only_results=False, exclude_elms=extra)
    info = grids.info("my_cigre")
    assert not info.bundled and not info.synthetic
    assert str(path.resolve()) in info.source
    assert info.counts == grids.info("cigre_mv").counts
    pandapower.runpp(loaded, lightsim2grid=False)
    assert loaded.converged


def test_matpower_round_trip(tmp_path: Path, gridtwin_home: Path) -> None:
    path = _write(tmp_path, "case3.m", CASE3.replace("BASEKV", "110"))
    grids.import_file(path, "case3")
    assert _user_files(gridtwin_home) == ["case3.json"]
    net = grids.load("case3")
    assert len(net.bus) == 3 and (net.bus.vn_kv == 110.0).all()
    pandapower.runpp(net, lightsim2grid=False)
    assert net.converged
    assert net.res_bus.vm_pu.iloc[0] == pytest.approx(1.02)
    assert "MATPOWER" in grids.info("case3").source


def test_store_false_validates_without_writing(tmp_path: Path, gridtwin_home: Path) -> None:
    path = _write(tmp_path, "case3.m", CASE3.replace("BASEKV", "110"))
    net = grids.import_file(path, "case3", store=False)
    assert len(net.bus) == 3
    assert _user_files(gridtwin_home) == []
    assert "case3" not in grids.names()


def test_matpower_with_basekv_zero_is_refused(tmp_path: Path, gridtwin_home: Path) -> None:
    path = _write(tmp_path, "case3.m", CASE3.replace("BASEKV", "0"))
    with pytest.raises(GridFileError) as err:
        grids.import_file(path, "case3")
    assert str(path) in str(err.value)
    assert "baseKV" in str(err.value)
    assert _user_files(gridtwin_home) == []


@pytest.mark.parametrize(
    ("filename", "text", "expected"),
    [
        ("broken.json", '{"_module": "pandapower.auxiliary", "_class": ', "invalid JSON"),
        ("dict.json", '{"a": 1}', "found a JSON dict with keys ['a']"),
        ("list.json", "[1, 2, 3]", "found a JSON list"),
        ("junk.m", "function x = junk\n x = 3;\n", "MATPOWER case"),
        ("grid.txt", "hello", "expected a .m"),
    ],
)
def test_bad_files_raise_grid_file_error_and_write_nothing(
    tmp_path: Path, gridtwin_home: Path, filename: str, text: str, expected: str
) -> None:
    path = _write(tmp_path, filename, text)
    with pytest.raises(GridFileError) as err:
        grids.import_file(path, "bad")
    assert err.value.path == str(path)
    assert expected in str(err.value)
    assert _user_files(gridtwin_home) == []
    assert "bad" not in grids.names()


def test_nets_that_are_not_usable_grids_are_refused(tmp_path: Path, gridtwin_home: Path) -> None:
    empty = tmp_path / "empty.json"
    pandapower.to_json(pandapower.create_empty_network(), str(empty))
    with pytest.raises(GridFileError, match="at least one bus"):
        grids.import_file(empty, "empty")
    no_slack = grids.load("kerber_landnetz")
    no_slack.ext_grid.drop(no_slack.ext_grid.index, inplace=True)
    path = tmp_path / "no_slack.json"
    pandapower.to_json(no_slack, str(path))
    with pytest.raises(GridFileError, match="ext_grid or slack gen"):
        grids.import_file(path, "no_slack")
    assert _user_files(gridtwin_home) == []


def test_names_that_are_bundled_or_invalid_are_refused(tmp_path: Path, gridtwin_home: Path) -> None:
    path = _write(tmp_path, "case3.m", CASE3.replace("BASEKV", "110"))
    with pytest.raises(GridFileError, match="bundled grid"):
        grids.import_file(path, "ieee14")
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(GridFileError, match="grid name"):
            grids.import_file(path, bad)
    with pytest.raises(GridFileError, match="no such file"):
        grids.import_file(tmp_path / "missing.m", "missing")
    assert _user_files(gridtwin_home) == []
    assert not (tmp_path / "escape.json").exists()


def test_failed_reimport_keeps_the_existing_user_grid(tmp_path: Path, gridtwin_home: Path) -> None:
    good = _write(tmp_path, "case3.m", CASE3.replace("BASEKV", "110"))
    grids.import_file(good, "g")
    before = (gridtwin_home / "grids" / "g.json").read_bytes()
    bad = _write(tmp_path, "bad.json", "{not json")
    with pytest.raises(GridDataError):
        grids.import_file(bad, "g")
    assert (gridtwin_home / "grids" / "g.json").read_bytes() == before
    assert _user_files(gridtwin_home) == ["g.json"]  # no temp file left behind


def test_a_corrupt_file_in_the_user_folder_fails_on_load(gridtwin_home: Path) -> None:
    folder = gridtwin_home / "grids"
    folder.mkdir(parents=True)
    (folder / "hand_made.json").write_text("{oops", encoding="utf-8")
    assert "hand_made" in grids.names()
    with pytest.raises(GridFileError) as err:
        grids.load("hand_made")
    assert "hand_made.json" in str(err.value)
