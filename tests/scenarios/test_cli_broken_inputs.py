"""The broken-file corpus (tests/data/broken/cases.toml) through the real CLI in a subprocess:
each case's exit code and message (file, line, expected, found), and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "broken"
CASES = tomllib.loads((CORPUS / "cases.toml").read_text(encoding="utf-8"))["case"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_broken_input(case: dict, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRIDTWIN_HOME=str(tmp_path / "home"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case["argv"]]
    r = subprocess.run(
        [sys.executable, "-m", "scenarios.cli", *argv],
        cwd=CORPUS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert r.returncode == case["exit"], (r.returncode, r.stderr)
    for text in case["says"]:
        assert text in r.stderr, f"{text!r} not in:\n{r.stderr}"
    assert not (tmp_path / "home" / "grids" / "x.json").exists()  # a failed import wrote nothing


def test_every_case_folder_is_used() -> None:
    used = {a.split("/")[0] for c in CASES for a in c["argv"] if "/" in a}
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders <= used, folders - used
