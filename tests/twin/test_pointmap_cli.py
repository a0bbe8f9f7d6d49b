"""``gridtwin points generate|check`` through the real CLI entry point and bundled grids."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scenarios.cli import main
from twin.pointmap import loads_pointmap

try:
    import grids  # noqa: F401
except ModuleNotFoundError:
    # The editable install predates grids/__init__.py, so its finder does not map ``grids``
    # until gridtwin is reinstalled: use the source tree this test file sits in.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    grids = pytest.importorskip("grids")


def test_generate_to_stdout_then_check(tmp_path, capsys):
    assert main(["points", "generate", "--grid", "ieee14", "--mode", "mirror"]) == 0
    text = capsys.readouterr().out
    pm = loads_pointmap(text)
    assert pm.grid == "ieee14" and pm.mode == "mirror"
    assert len(pm) > 100
    f = tmp_path / "ieee14.toml"
    f.write_text(text, encoding="utf-8")
    assert main(["points", "check", str(f), "--grid", "ieee14"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {f}: {len(pm)} points fit grid 'ieee14'")
    n_meas = sum(p.kind == "measurement" for p in pm)
    assert f"measurement {n_meas}" in out
    assert "input_register" in out


def test_generate_to_file_and_check_against_the_wrong_grid(tmp_path, capsys):
    f = tmp_path / "cigre.toml"
    assert main(["points", "generate", "--grid", "cigre_mv", "--out", str(f)]) == 0
    assert f.exists() and "wrote" in capsys.readouterr().err
    assert main(["points", "check", str(f), "--grid", "cigre_mv"]) == 0
    capsys.readouterr()
    # ieee9 has no switches named S2, far fewer buses...: problems, exit 1
    assert main(["points", "check", str(f), "--grid", "ieee9"]) == 1
    out = capsys.readouterr().out
    assert "problems against grid 'ieee9'" in out
    assert f"{f}:" in out and "element:" in out


def test_check_reports_file_errors_with_lines(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text(
        '[[point]]\nname = "A"\nbind = "bus.vm_pu[0]"\ndirection = "to_field"\n'
        'kind = "meas"\n[point.opcua]\nnode_id = "ns=2;s=SS1/B/A/vm_pu"\n',
        encoding="utf-8",
    )
    assert main(["points", "check", str(f), "--grid", "ieee9"]) == 1
    out = capsys.readouterr().out
    assert (
        f"{f}:5: point 'A': kind: expected one of status, measurement, command, setpoint, "
        "found 'meas'" in out
    )


def test_unknown_grid_is_a_usage_error(tmp_path, capsys):
    assert main(["points", "generate", "--grid", "no_such_grid"]) == 2
    assert "unknown grid 'no_such_grid'" in capsys.readouterr().err
