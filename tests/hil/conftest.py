"""Shared fixtures of the hil tests: small and generic on purpose."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import pandapower as pp
import pytest
from asyncua import Server, ua

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


def _feeder_net(name: str = "", *, breaker: bool = True) -> pp.pandapowerNet:
    """110/20 kV trafo T1 with a tap changer, line L1 to feeder bus F1, one heavy load LD1.

    With ``breaker`` the line sits behind the line breaker Q1 (a switch at MV).
    """
    net = pp.create_empty_network(name=name)
    b0 = pp.create_bus(net, 110.0, name="HV")
    b1 = pp.create_bus(net, 20.0, name="MV")
    b2 = pp.create_bus(net, 20.0, name="F1")
    pp.create_ext_grid(net, b0, vm_pu=1.0, name="Grid")
    pp.create_transformer(net, b0, b1, "25 MVA 110/20 kV", name="T1")
    ln = pp.create_line(net, b1, b2, 3.0, "NA2XS2Y 1x240 RM/25 12/20 kV", name="L1")
    if breaker:
        pp.create_switch(net, b1, ln, "l", closed=True, name="Q1")
    pp.create_load(net, b2, 14.0, 4.0, name="LD1")
    return net


@pytest.fixture(scope="session")
def feeder_net() -> Callable[..., pp.pandapowerNet]:
    """The builder of the small test net: ``feeder_net(name="", *, breaker=True)``.

    Each call builds a fresh net (tests change nets in place). A builder rather than a net
    because module-level helpers of the tests build them (pytest imports test files with
    ``--import-mode=importlib``, so they cannot import a shared helper module).
    """
    return _feeder_net


async def _plain_server(
    endpoint: str,
    namespace: str,
    variables: Iterable[tuple[str, str, ua.Variant, bool]],
    writes: list[int],
) -> tuple[Server, int]:
    """A started plain asyncua Server (NoSecurity) standing in for a plant's OPC UA server.

    One variable per ``(string node id, browse name, initial variant, writable)`` in
    ``namespace``; the number of nodes of every Write request is appended to ``writes``.
    Returns the server and the namespace's index.
    """
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(namespace)
    for node_id, name, variant, writable in variables:
        var = await server.nodes.objects.add_variable(ua.NodeId(node_id, ns), name, variant)
        if writable:
            await var.set_writable()
    svc = server.iserver.attribute_service
    orig = svc.write

    async def counting_write(params: Any, *a: Any, **kw: Any) -> Any:
        writes.append(len(params.NodesToWrite))
        return await orig(params, *a, **kw)

    svc.write = counting_write
    await server.start()
    return server, ns


@pytest.fixture(scope="session")
def start_plain_server() -> Callable[..., Any]:
    """The starter of a plain asyncua plant server: see :func:`_plain_server`."""
    return _plain_server
