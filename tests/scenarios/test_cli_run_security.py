"""``gridtwin run`` security options (issue 11): bad input named before anything runs,
``--insecure`` announced loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = 'name = "tiny"\ngrid = "ieee14"\nduration = "2s"\nstep = "1s"\n'


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "tiny.toml"
    f.write_text(SCENARIO)
    return subprocess.run(
        [sys.executable, "-m", "scenarios.cli", "run", str(f), "--no-progress", "-q",
         "--no-report", "--out", str(tmp_path / "out"), *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_a_pki_folder_without_certificate_is_refused_with_the_command(tmp_path: Path) -> None:
    res = _run(tmp_path, "--pki", str(tmp_path / "nope"))
    assert res.returncode == 2, res.stderr
    assert "own/cert.der" in res.stderr and "gridtwin certs create" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_a_missing_users_file_is_refused(tmp_path: Path) -> None:
    res = _run(tmp_path, "--users", str(tmp_path / "users.toml"))
    assert res.returncode == 2, res.stderr
    assert "users file" in res.stderr and "certs add-user" in res.stderr, res.stderr


def test_insecure_is_announced(tmp_path: Path) -> None:
    res = _run(tmp_path, "--insecure")
    assert res.returncode == 0, res.stderr
    assert "WARNING: --insecure" in res.stderr and "None" in res.stderr, res.stderr
