"""Serving an emulated substation until told to stop (``gridtwin emulate``).

The CLI parses; this module owns the event loop, the signal handlers and the substation.
Security (issue 11): the servers are made here with the OPC UA security (certificates, trust
list, users), the Modbus policy (read-only, write allow-list, connection limits) and the audit
file the CLI chose, before the substation starts them.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twin.pointmap import PointMap


def serve_substation(
    net: Any,
    pm: PointMap,
    *,
    grid: str,
    host: str = "127.0.0.1",
    opcua_port: int = 4840,
    modbus_port: int = 5020,
    users: dict[str, Any] | None = None,
    devices: bool = True,
    seed: int | None = None,
    duration: float | None = None,
    say: Callable[[str], None] = print,
    opcua_security: Any = None,
    modbus_policy: Any = None,
    audit_path: Path | None = None,
    device_settings: Any = None,
) -> int:
    """Serve ``pm`` over OPC UA and Modbus TCP until SIGINT/SIGTERM or ``duration`` seconds.

    Prints the endpoints (``say``) once serving. Returns the exit code (0).

    ``opcua_security`` (:class:`hil.security.certs.OpcuaSecurity`), ``modbus_policy``
    (:class:`hil.emulator.modbus_server.ModbusPolicy`) and ``audit_path`` (JSON lines of every
    write attempt) configure the servers; None keeps the library defaults.

    Raises:
        OSError: a port is taken or the address is not on this machine.
    """
    return asyncio.run(
        _serve(
            net,
            pm,
            grid=grid,
            host=host,
            opcua_port=opcua_port,
            modbus_port=modbus_port,
            users=users or {},
            devices=devices,
            seed=seed,
            duration=duration,
            say=say,
            opcua_security=opcua_security,
            modbus_policy=modbus_policy,
            audit_path=audit_path,
            device_settings=device_settings,
        )
    )


async def _serve(
    net: Any,
    pm: PointMap,
    *,
    grid: str,
    host: str,
    opcua_port: int,
    modbus_port: int,
    users: dict[str, Any],
    devices: bool,
    seed: int | None,
    duration: float | None,
    say: Callable[[str], None],
    opcua_security: Any = None,
    modbus_policy: Any = None,
    audit_path: Path | None = None,
    device_settings: Any = None,
) -> int:
    from hil.address_space import report_progress
    from hil.emulator import EmulatedSubstation
    from hil.security.audit import audit_log

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    starting = True

    def on_signal() -> None:
        stop.set()
        if starting and main is not None:  # a start-up of minutes must not outlive Ctrl-C
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # not on this platform / thread
            pass
    sub = EmulatedSubstation(
        net,
        pm,
        host=host,
        opcua_port=opcua_port,
        modbus_port=modbus_port,
        users=users,
        devices=devices,
        rng=seed,
        opcua_security=opcua_security,
        modbus_policy=modbus_policy,
        device_settings=device_settings,
    )
    audit = audit_log(sub.store)
    if audit_path is not None:
        audit.stream_to(audit_path)
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        now = loop.time()
        if done >= total or now - shown[0] >= 1.0:
            shown[0] = now
            say(f"  building the OPC UA address space: {done:,} of {total:,} nodes")

    try:
        with report_progress(progress):
            await sub.start()
    except asyncio.CancelledError:
        say("gridtwin emulate: stopped while starting")
        _remove_handlers(loop)
        return 0
    starting = False
    async with sub:
        kinds: Counter[str] = Counter(p.kind for p in pm.points)
        units = sorted({p.modbus.unit for p in pm.points if p.modbus is not None})
        n_ua = sum(1 for p in pm.points if p.opcua is not None)
        n_mb = sum(1 for p in pm.points if p.modbus is not None)
        say(f"gridtwin emulate: grid {grid}, substation {pm.substation}, {len(pm)} points")
        plural = {"measurement": "measurements", "status": "statuses"}
        plural.update(command="commands", setpoint="setpoints")
        say(
            "  "
            + ", ".join(f"{kinds.get(k, 0)} {v}" for k, v in plural.items())
            + f"; {len(sub.devices)} devices"
        )
        say(f"  OPC UA  {sub.opcua_endpoint}  ({n_ua} nodes, namespace {pm.namespace})")
        say(f"  Modbus  {host}:{sub.modbus_port}  ({n_mb} points, units {units})")
        if audit.path is not None:
            say(f"  audit   {audit.path}")
        say(f"serving for {duration:g} s" if duration is not None else "serving until Ctrl-C")
        try:
            await asyncio.wait_for(stop.wait(), duration)
        except TimeoutError:
            pass
    say("gridtwin emulate: stopped")
    _remove_handlers(loop)
    return 0


def _remove_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.remove_signal_handler(sig)
        except (NotImplementedError, RuntimeError):
            pass
