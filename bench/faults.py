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
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
