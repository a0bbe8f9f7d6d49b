"""Shared fixtures of the hil tests: small and generic on purpose."""

from __future__ import annotations

import asyncio
import shutil

import pytest

#: How long a finished test may take to let its own tasks wind down (s).
_TASK_GRACE_S = 2.0


@pytest.fixture
async def no_task_leak():
    """Fail the test if it leaves asyncio tasks running (as pymodbus's own conftest does).

    Use with ``pytestmark = pytest.mark.usefixtures("no_task_leak")`` so it wraps the other
    fixtures of the test.
    """
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()

    def leftover() -> set[asyncio.Task]:
        return {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}

    # closing transports and sessions finish within a few loop turns: wait for them, bounded
    deadline = asyncio.get_running_loop().time() + _TASK_GRACE_S
    for _ in range(200):
        if not leftover() or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    leaked = leftover()
    for task in leaked:
        task.cancel()
    if leaked:
        names = ", ".join(sorted(t.get_name() + ":" + repr(t.get_coro()) for t in leaked))
        pytest.fail(f"expected no asyncio task left after the test, found {len(leaked)}: {names}")


@pytest.fixture(scope="session")
def mbpoll_path() -> str:
    """Path of Debian's ``mbpoll`` (skips the test when it is not installed)."""
    path = shutil.which("mbpoll")
    if path is None:
        pytest.skip("mbpoll is not on PATH (apt-get install -y mbpoll; .ci/run installs it)")
    return path
