"""Shared fixtures. Protocol tests bind 127.0.0.1 on free ports; nothing leaves the machine."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """The suite (and every process it starts) keeps user grids and the grid cache in its own
    folder, never in the user's ~/.local/share/gridtwin."""
    os.environ.setdefault("GRIDTWIN_HOME", tempfile.mkdtemp(prefix="gridtwin-tests-"))


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
