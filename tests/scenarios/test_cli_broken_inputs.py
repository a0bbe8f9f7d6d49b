"""The broken-file corpus (tests/data/broken/cases.toml) through the real CLI: each case's exit
code and message (file, line, expected, found), and never a traceback.

Cases run in-process through :func:`scenarios.cli.main` (the same code path as the console
script, minus the interpreter start-up and the pandapower import per case); a case with
``subprocess = true`` runs ``python -m scenarios.cli`` in a separate process, so that the real
entry point, its stderr and its exit status stay covered.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from scenarios.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "broken"
CASES = tomllib.loads((CORPUS / "cases.toml").read_text(encoding="utf-8"))["case"]


def _argv(case: dict, tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in case["argv"]]


def _in_process(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> tuple[int, str, str]:
    monkeypatch.chdir(CORPUS)
    monkeypatch.setenv("GRIDTWIN_HOME", str(tmp_path / "home"))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors exit 2 themselves
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 2
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(argv: list[str], tmp_path: Path) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRIDTWIN_HOME=str(tmp_path / "home"))
    r = subprocess.run(
        [sys.executable, "-m", "scenarios.cli", *argv],
        cwd=CORPUS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_broken_input(case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for name, content in case.get("files", {}).items():  # files made per test (e.g. an old run)
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content, encoding="utf-8")
    for name in case.get("readonly", []):
        p = tmp_path / name
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(0o555)
        if os.access(p, os.W_OK):  # root writes anyway: nothing to test
            pytest.skip("running as root: a read-only folder is writable")
    argv = _argv(case, tmp_path)
    if case.get("subprocess", False):
        code, out, err = _subprocess(argv, tmp_path)
    else:
        code, out, err = _in_process(argv, tmp_path, monkeypatch, capsys)
    assert "Traceback" not in err + out, err
    assert code == case["exit"], (code, err, out)
    for text in case["says"]:
        assert text in err, f"{text!r} not in:\n{err}"
    assert not (tmp_path / "home" / "grids" / "x.json").exists()  # a failed import wrote nothing
    for name in case.get("absent", []):
        assert not (tmp_path / name).exists(), name


def test_every_case_folder_is_used() -> None:
    used = {a.split("/")[0] for c in CASES for a in c["argv"] if "/" in a}
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders <= used, folders - used


def test_some_cases_run_in_a_separate_process() -> None:
    assert sum(bool(c.get("subprocess")) for c in CASES) >= 3
