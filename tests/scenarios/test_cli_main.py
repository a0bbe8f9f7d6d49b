"""The CLI's habits: --version, exit codes in --help, no tracebacks, --debug, numba quiet,
`scenarios list` and `scenarios copy`. Through the real entry point in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.cli import VERSION, main

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str, cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "scenarios.cli", *argv],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_version_matches_setup_py() -> None:
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"gridtwin {VERSION} ")
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r'version="([^"]+)"', setup).group(1) == VERSION  # type: ignore[union-attr]


def test_help_documents_exit_codes() -> None:
    r = cli("--help")
    assert r.returncode == 0
    for code in ("0  all checks passed", "1  a check failed", "2  bad input", "3  the run could"):
        assert code in r.stdout, code
    assert "scenarios" in r.stdout and "--debug" in r.stdout


def test_no_numba_notice_and_no_traceback() -> None:
    r = cli("solve", "ieee9")
    assert r.returncode == 0 and "numba" not in r.stderr, r.stderr
    bad = cli("solve", "no/such/grid.m")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("gridtwin: error: no/such/grid.m: expected a grid file")


def test_unwritable_output_is_exit_3_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    r = cli("grids", "export", "ieee9", "--out", "/proc/gridtwin/x.json")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "cannot write /proc/gridtwin/x.json" in r.stderr and "could not complete" in r.stderr
    d = cli("--debug", "grids", "export", "ieee9", "--out", "/proc/gridtwin/x.json")
    assert d.returncode == 3 and "Traceback" in d.stderr


def test_usage_error_is_exit_2() -> None:
    r = cli("solve")
    assert r.returncode == 2 and "usage:" in r.stderr


def test_scenarios_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("city_day", "storm_restoration", "avr_load_ramp"):
        assert name in out
    assert "24 h on urban_district" in out


def test_scenarios_copy_writes_a_template_that_validates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["scenarios", "copy", "avr_load_ramp", str(tmp_path)]) == 0
    assert (tmp_path / "avr_load_ramp.toml").is_file() and (
        tmp_path / "avr_load_ramp.csv"
    ).is_file()
    capsys.readouterr()
    assert main(["scenarios", "copy", "avr_load_ramp", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["scenarios", "copy", "avr_load_ramp", str(tmp_path), "--force"]) == 0
    assert main(["scenarios", "copy", "city_dya", str(tmp_path / "x.toml")]) == 2
    assert "did you mean city_day?" in capsys.readouterr().err
    from scenarios.validate import validate_file

    _, problems = validate_file(tmp_path / "avr_load_ramp.toml")
    assert problems == []
