"""Fault table (issue 11): each link fault between the twin and a wall-clock emulated
substation, over Modbus TCP and OPC UA, through the TCP fault proxy of the tests.

Setup: a 3-bus feeder (trafo T1 with an AVR, breaker Q1, inverter PV), device watchdog
``--watchdog`` s (default 1), the twin's sync loop stepping every 0.2 s in hil mode; Modbus: the
twin's inputs and its heartbeat through the proxy (its measurements over a direct OPC UA link);
OPC UA: everything through the proxy (poll mode, watchdog 0.3 s, timeout 1 s). Each fault is
held ``4 * watchdog + 3`` s, then cleared.

Columns: detection (fault -> the twin's link marked down, its points COMMS_LOST), safe state
(fault -> the inverter's watchdog expired: P limit 0), recovery (fault cleared -> link up,
field reconciled, devices see the heartbeat again), quality transitions of a twin input (the
inverter's P) and of a value the twin serves (a measurement in the emulator), inputs older than
the fault applied as GOOD, failed steps. Times include the machine's load: see the load average.

    python bench/faults.py [--watchdog 1.0] [--only modbus|opcua]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "hil"))

MODES = ("drop", "blackhole", "cut", "garble", "half_open", "delay")


def _net():
    import pandapower as pp

    net = pp.create_empty_network(name="fault-feeder")
    b0 = pp.create_bus(net, 110.0, name="HV")
    b1 = pp.create_bus(net, 20.0, name="MV")
    b2 = pp.create_bus(net, 20.0, name="F1")
    pp.create_ext_grid(net, b0, vm_pu=1.0, name="Grid")
    pp.create_transformer(net, b0, b1, "25 MVA 110/20 kV", name="T1")
    ln = pp.create_line(net, b1, b2, 3.0, "NA2XS2Y 1x240 RM/25 12/20 kV", name="L1")
    pp.create_switch(net, b1, ln, "l", closed=True, name="Q1")
    pp.create_load(net, b2, 14.0, 4.0, name="LD1")
    pp.create_sgen(net, b2, 2.0, sn_mva=2.5, name="PV")
    return net


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _arrows(qs: list[str]) -> str:
    return " -> ".join(qs)


async def _one(protocol: str, mode: str, watchdog: float) -> dict:
    from faultproxy import FaultRig

    async with FaultRig(_net(), protocol, watchdog_s=watchdog) as rig:
        rig.proxy.delay_s = 0.5
        return await rig.run(mode)


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return int(so.getsockname()[1])


async def _emulator_killed(watchdog: float) -> dict:
    """A separate ``gridtwin emulate`` process (cigre_mv) killed -9 under the twin's sync loop
    (Modbus inputs and heartbeat, OPC UA measurements), then restarted on the same ports:
    detection (kill -> Modbus link down, inputs COMMS_LOST), recovery (the new process serving
    -> link up, reconciled, inputs GOOD), the setpoint the restart lost named by the reconcile."""
    import subprocess
    import tempfile
    import time

    import grids
    from hil.links.modbus import ModbusLink
    from hil.links.opcua import OpcuaLink
    from hil.sync import SyncLoop
    from twin.model import GridModel
    from twin.pointmap import generate_pointmap
    from twin.quality import Quality

    net = grids.load("cigre_mv")
    pm = generate_pointmap(net, mode="hil")
    ua_port, mb_port = _free_port(), _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gridtwin-faults-"))
    cmd = [sys.executable, "-m", "scenarios.cli", "emulate", "--grid", "cigre_mv"]
    cmd += ["--opcua-port", str(ua_port), "--modbus-port", str(mb_port), "--duration", "300"]
    cmd += ["--insecure", "--user", "plant:pw-plant:plant", "--watchdog-s", str(watchdog)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def start(n: int) -> subprocess.Popen:
        log = tmp / f"emu{n}.log"
        fh = open(log, "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        end = time.monotonic() + 120
        while "\nserving" not in log.read_text() and time.monotonic() < end:
            time.sleep(0.1)
        return proc

    outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
    sp = next(p for p in pm.points if p.table == "sgen" and p.column == "p_limit_pct")
    emu = start(1)
    mb = ModbusLink("127.0.0.1", mb_port, [p for p in pm.points if p not in outputs],
                    timeout_s=0.5, backoff_max_s=0.5)  # fmt: skip
    ua = OpcuaLink(f"opc.tcp://127.0.0.1:{ua_port}/gridtwin/", outputs, user="plant",
                   password="pw-plant", namespace=pm.namespace, watchdog_s=0.3, timeout_s=1.0,
                   backoff_max_s=0.5)  # fmt: skip
    out: dict = {"steps": 0, "step_errors": 0, "old_good": 0}
    killed_at: float | None = None
    try:
        for lk in (mb, ua):
            await lk.connect()
        loop = SyncLoop(GridModel(net), pm, [mb, ua], mode="hil")
        await mb.write_point(sp.name, 50.0)
        name = mb.inputs[0].name
        qualities: list[str] = []

        async def until(cond, timeout_s: float) -> float | None:
            t0 = time.monotonic()
            while time.monotonic() - t0 < timeout_s:
                try:
                    await loop.step(time.time())
                except Exception:
                    out["step_errors"] += 1
                out["steps"] += 1
                if killed_at is not None:  # a sample from before the kill taken as GOOD
                    out["old_good"] += sum(
                        1
                        for sm in loop.samples.values()
                        if sm.quality is Quality.GOOD and sm.timestamp < killed_at
                    )
                q = loop.samples[name].quality.value if name in loop.samples else "missing"
                if not qualities or qualities[-1] != q:
                    qualities.append(q)
                if cond():
                    return time.monotonic() - t0
                await asyncio.sleep(0.2)
            return None

        await until(lambda: loop.heartbeats_sent >= 5, 30)
        t_kill = time.monotonic()
        killed_at = time.time()
        emu.kill()
        emu.wait(timeout=10)
        lost = Quality.COMMS_LOST
        await until(lambda: not mb.connected and loop.samples[name].quality is lost, 30)
        out["detected_s"] = time.monotonic() - t_kill
        emu = start(2)
        t_up = time.monotonic()
        await until(
            lambda: (
                any(r[1] == mb.name for r in loop.reconciled)
                and loop.samples[name].quality is Quality.GOOD
            ),
            60,
        )
        out["recovery_s"] = time.monotonic() - t_up
        rec = next((r for r in loop.reconciled if r[1] == mb.name), None)
        out["reconciled"] = {} if rec is None else rec[2]
        out["input_qualities"] = qualities
    finally:
        for lk in (mb, ua):
            await lk.close()
        emu.kill()
        emu.wait(timeout=10)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--watchdog", type=float, default=1.0)
    ap.add_argument("--only", choices=("modbus", "opcua"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import warnings

    warnings.simplefilter("ignore")
    protocols = [args.only] if args.only else ["modbus", "opcua"]
    print(f"load average before: {os.getloadavg()}, watchdog {args.watchdog:g} s\n")
    print(
        "| fault | protocol | detected after | safe state after | recovery after clear "
        "| twin input quality | served value quality | old input applied as good "
        "| failed steps / steps |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for protocol in protocols:
        for mode in MODES:
            r = asyncio.run(_one(protocol, mode, args.watchdog))
            label = "delay 0.5 s/chunk" if mode == "delay" else mode
            print(
                f"| {label} | {protocol} | {_s(r['detected_s'])} | {_s(r['safe_s'])} "
                f"| {_s(r['recovery_s'])} | {_arrows(r['input_qualities'])} "
                f"| {_arrows(r['served_qualities'])} | {r['stale_applied_good']} "
                f"| {r['step_errors']} / {r['steps']} |",
                flush=True,
            )
    if not args.only:
        r = asyncio.run(_emulator_killed(args.watchdog))
        differ = ", ".join(f"{k} twin {a:g} / field {b:g}" for k, (a, b) in r["reconciled"].items())
        print(
            f"| emulator process killed -9, restarted on its ports | modbus + opcua "
            f"| {_s(r.get('detected_s'))} | - (the devices died with it) "
            f"| {_s(r.get('recovery_s'))} after it serves again (reconciled: {differ or 'none'}) "
            f"| {_arrows(r['input_qualities'])} | - | {r['old_good']} "
            f"| {r['step_errors']} / {r['steps']} |",
            flush=True,
        )
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
