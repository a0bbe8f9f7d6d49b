"""Emulator start-up benchmark: time and memory to serve N points, bulk build vs asyncua's own.

For each point count N (the first N points of the grid's generated map), a fresh Python process
starts the emulated substation (OPC UA + Modbus TCP on 127.0.0.1, no device behaviours, no
initial load flow) and waits until an OPC UA client has read the last point and a Modbus client
its register: "served". Each count runs twice, in separate processes:

- ``bulk``: the address space as the emulator builds it (``hil.address_space``: nodes created
  straight in asyncua's AddressSpace, folders bounded to ``DEFAULT_MAX_CHILDREN``);
- ``asyncua``: the same tree, node ids and attributes through asyncua's add_object /
  add_variable / add_property (``BulkBuilder.build_node_by_node``), i.e. asyncua at its best
  (bounded folders; with every bay under one node, as before, it is quadratic on top).

Prints a markdown table: wall and CPU seconds to serve, of it the OPC UA server's init (the
standard address space), our nodes, and Modbus, the process RSS once serving, and the ratio
asyncua / bulk; then the targets (91,762 points served in < 10 s, 27,688 in < 4 s) met or by how
much not. The machine's load average is printed: on a shared machine wall times are inflated
(CPU seconds less so).

    python bench/emulator.py [--grid case9241pegase] [--counts 1000,10000,30000,90000]
                             [--quick] [--baseline-max N]

``--quick`` runs 1,000 and 10,000 points of case1354pegase (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: (points, seconds): the issue's targets, checked for a count at least this large
TARGETS = ((91_762, 10.0), (27_688, 4.0))


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- child: one start-up ---------------------------------------------------------------------
def _child(mode: str, n: int, data: str) -> None:
    import dataclasses
    import logging

    logging.disable(logging.WARNING)
    with open(data, "rb") as f:
        net, pm = pickle.load(f)
    pm = dataclasses.replace(pm, points=pm.points[:n])
    from asyncua import Client
    from pymodbus.client import AsyncModbusTcpClient

    from hil.address_space import BulkBuilder
    from hil.emulator import EmulatedSubstation
    from hil.emulator import opcua_server as uas

    phases: dict[str, float] = {"build": 0.0, "opcua": 0.0}
    real_build = uas.OpcuaServer._build

    async def node_by_node(self: uas.OpcuaServer, server: object) -> None:
        uri = getattr(self.store.pointmap, "namespace", uas.NAMESPACE_DEFAULT)
        ns = await server.register_namespace(uri)  # type: ignore[attr-defined]
        # the same variables as the bulk build, made by asyncua's public API
        captured: list = []
        orig_build = BulkBuilder.build

        async def capture(b: BulkBuilder, progress: object = None) -> dict:
            captured.append(b)
            return {}

        BulkBuilder.build = capture  # type: ignore[method-assign]
        try:
            from hil.address_space import build_point_nodes

            self._nodes.clear()
            self._node_of.clear()
            self._built = {}  # type: ignore[attr-defined]
            self._nodes.update(
                await build_point_nodes(
                    server,
                    ns,
                    self.store,
                    self._node_of,
                    self._vtype,
                    self._built,  # type: ignore[attr-defined]
                )
            )
        finally:
            BulkBuilder.build = orig_build  # type: ignore[method-assign]
        await captured[0].build_node_by_node()

    async def timed_build(self: uas.OpcuaServer, server: object) -> None:
        t = time.perf_counter()
        if mode == "asyncua":
            await node_by_node(self, server)
        else:
            await real_build(self, server)
        phases["build"] = time.perf_counter() - t

    uas.OpcuaServer._build = timed_build  # type: ignore[method-assign]
    real_start = uas.OpcuaServer.start

    async def timed_start(self: uas.OpcuaServer) -> None:
        t = time.perf_counter()
        await real_start(self)
        phases["opcua"] = time.perf_counter() - t

    uas.OpcuaServer.start = timed_start  # type: ignore[method-assign]
    last_ua = next(p for p in reversed(pm.points) if p.opcua is not None)
    last_mb = next(p for p in reversed(pm.points) if p.modbus is not None)

    async def run() -> dict:
        rss0 = _rss_mb()
        c0, t0 = time.process_time(), time.perf_counter()
        sub = EmulatedSubstation(net, pm, devices=False, initial_loadflow=False)
        t_store = time.perf_counter() - t0
        await sub.start()
        try:
            t_start = time.perf_counter() - t0
            async with Client(sub.opcua_endpoint, timeout=60) as client:
                await client.get_node(sub.node_id(last_ua.name)).read_data_value(
                    raise_on_bad_status=False
                )
            mb = AsyncModbusTcpClient("127.0.0.1", port=sub.modbus_port, timeout=60)
            await mb.connect()
            m = last_mb.modbus
            assert m is not None
            read = {
                "coil": mb.read_coils,
                "discrete_input": mb.read_discrete_inputs,
                "input_register": mb.read_input_registers,
                "holding_register": mb.read_holding_registers,
            }[m.table]
            rr = await read(m.address, count=1, device_id=m.unit)
            mb.close()
            # served = answered: data, or 04 for a point with no good value yet (a store without
            # an initial load flow), never a timeout or a dropped connection
            assert not rr.isError() or getattr(rr, "exception_code", None) == 4, rr
            served = time.perf_counter() - t0
            cpu = time.process_time() - c0
            rss = _rss_mb()
        finally:
            await sub.stop()
        return {
            "mode": mode,
            "points": len(pm),
            "ua_nodes": sum(1 for p in pm.points if p.opcua is not None),
            "served_s": served,
            "cpu_s": cpu,
            "store_s": t_store,
            "opcua_s": phases["opcua"],
            "build_s": phases["build"],
            "init_s": phases["opcua"] - phases["build"],
            "rest_s": t_start - t_store - phases["opcua"],
            "rss_mb": rss,
            "rss_delta_mb": rss - rss0,
        }

    print(json.dumps(asyncio.run(run())))


# --- parent ----------------------------------------------------------------------------------
def _prepare(grid: str, path: str) -> int:
    import grids
    from twin.pointmap import generate_pointmap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = grids.load(grid)
        pm = generate_pointmap(net, mode="hil")
    with open(path, "wb") as f:
        pickle.dump((net, pm), f)
    return len(pm)


def _one(mode: str, n: int, data: str, timeout: float) -> dict | None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(n), data],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        print(f"  {mode} {n}: not served within {timeout:g} s", file=sys.stderr)
        return None
    if proc.returncode != 0:
        print(f"  {mode} {n}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=None, help="grid whose generated map is cut to N points")
    ap.add_argument("--counts", default=None, help="comma-separated point counts")
    ap.add_argument("--quick", action="store_true", help="1k and 10k points of case1354pegase")
    ap.add_argument(
        "--baseline-max",
        type=int,
        default=100_000,
        help="run asyncua's node-by-node build only up to this many points (default 100000)",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="per start-up (s)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2])
        return 0
    grid = args.grid or ("case1354pegase" if args.quick else "case9241pegase")
    try:
        counts = (
            [int(c) for c in args.counts.split(",")]
            if args.counts
            else ([1_000, 10_000] if args.quick else [1_000, 10_000, 27_688, 91_762])
        )
    except ValueError:
        print(
            f"--counts: expected integers like 1000,10000, found {args.counts!r}", file=sys.stderr
        )
        return 2
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "map.pickle")
        total = _prepare(grid, data)
        counts = sorted({min(c, total) for c in counts if c > 0})
        print(f"# emulator start-up: {grid} ({total} points in its map), load average {load0}")
        print()
        print(
            "| points | build | served s | CPU s | OPC UA init s | nodes s | Modbus+rest s "
            "| RSS MB (+ for the substation) | asyncua / bulk |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        results: dict[tuple[str, int], dict] = {}
        for n in counts:
            modes = ["bulk"] + (["asyncua"] if n <= args.baseline_max else [])
            for mode in modes:
                r = _one(mode, n, data, args.timeout)
                if r is None:
                    print(f"| {n} | {mode} | not served | | | | | | |")
                    continue
                results[(mode, n)] = r
                ratio = ""
                if mode == "asyncua" and ("bulk", n) in results:
                    b = results[("bulk", n)]
                    ratio = (
                        f"{r['served_s'] / b['served_s']:.1f}x served, "
                        f"{r['cpu_s'] / max(b['cpu_s'], 1e-9):.1f}x CPU, "
                        f"{r['build_s'] / max(b['build_s'], 1e-9):.1f}x nodes, "
                        f"{r['rss_delta_mb'] / max(b['rss_delta_mb'], 1e-9):.1f}x memory"
                    )
                print(
                    f"| {n} | {mode} | {r['served_s']:.2f} | {r['cpu_s']:.2f} | {r['init_s']:.2f} "
                    f"| {r['build_s']:.2f} | {r['rest_s'] + r['store_s']:.2f} "
                    f"| {r['rss_mb']:.0f} (+{r['rss_delta_mb']:.0f}) | {ratio} |",
                    flush=True,
                )
    print()
    print(f"load average at the end {os.getloadavg()} (2 cores; > 2 means wall times are inflated)")
    for need, limit in TARGETS:
        got = [r for (m, n), r in results.items() if m == "bulk" and n >= need]
        if not got:
            continue
        s = got[0]["served_s"]
        verdict = "met" if s < limit else f"NOT met by {s - limit:.1f} s"
        print(f"target: {need} points served in < {limit:g} s: {s:.2f} s, {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
