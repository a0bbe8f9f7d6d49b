"""Fixtures for the grid library tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def gridtwin_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every grid test gets an empty user grid folder (never the real ~/.local/share)."""
    home = tmp_path / "gridtwin_home"
    monkeypatch.setenv("GRIDTWIN_HOME", str(home))
    return home
