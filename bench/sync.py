"""Sync-loop benchmark: ieee118 in hil mode against the emulated substation over both protocols.

Setup: the generated point map of the grid (1,200 points on ieee118), the emulated substation on
127.0.0.1 on the wall clock (device behaviours ticking every 50 ms), the twin's inputs (statuses)
polled over Modbus TCP each step, its computed measurements written over OPC UA as the plant (one
write_values per step; the link skips values inside their deadband), the recorder writing Parquet
into a temporary folder. Loads follow a seeded random walk (+-2 % per step) applied to the model
after each step, so every step solves a new operating point and writes changed values.

Prints a markdown table of per-phase p50/p99 (ms), the load-flow share of the step and the
deadline misses. Targets: p99 whole step < 20 ms, load flow < 10 % of the step, no misses.

    python bench/sync.py [--grid ieee118] [--rate 10] [--duration 60] [--policy skip]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("read", "apply", "solve", "estimate", "results", "write", "record", "publish")
PLANT_USERS = {"plant": ("bench-plant", "plant")}


def _build(grid: str):
    import grids
    from twin.pointmap import generate_pointmap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = grids.load(grid)
        return net, generate_pointmap(net, mode="hil")


def _emulator_process(grid: str, conn) -> None:
    """Child process: serve the emulated substation until the parent says stop."""
    from hil.emulator.substation import EmulatedSubstation

    async def serve() -> None:
        net, pm = _build(grid)
        async with EmulatedSubstation(net, pm, users=PLANT_USERS) as sub:
            conn.send((sub.opcua_endpoint, sub.modbus_port))
            while not conn.poll():
                await asyncio.sleep(0.2)

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(serve())


class _Remote:
    """The emulated substation in its own process (its CPU is not the twin's)."""

    def __init__(self, grid: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_emulator_process, args=(grid, child), daemon=True)

    async def __aenter__(self):
        self._proc.start()
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._conn.poll, 120.0)
        if not ready:
            raise RuntimeError("emulated substation process did not start within 120 s")
        self.opcua_endpoint, self.modbus_port = self._conn.recv()
        return self

    async def __aexit__(self, *exc) -> None:
        self._conn.send("stop")
        await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 10.0)
        if self._proc.is_alive():
            self._proc.terminate()


async def run(args: argparse.Namespace) -> dict:
    from hil.emulator.substation import EmulatedSubstation
    from hil.links.modbus import ModbusLink
    from hil.links.opcua import OpcuaLink
    from hil.sync import SyncLoop
    from hil.twin_server import TwinServer
    from twin.model import GridModel
    from twin.recorder import Recorder

    net, pm = _build(args.grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GridModel(net)
    inputs = [p for p in pm.points if p.direction == "to_twin"]
    outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
    if args.only_columns:
        outputs = [p for p in outputs if p.column in args.only_columns]
    if args.max_outputs is not None:
        outputs = outputs[: args.max_outputs]  # the loop writes only what a link carries
    rng = np.random.default_rng(args.seed)
    p0 = net.load.p_mw.to_numpy(float).copy()
    q0 = net.load.q_mvar.to_numpy(float).copy()
    scale = np.ones(len(p0))

    def walk(loop, rep, sol) -> None:
        # the next operating point (a profile would do this in a scenario)
        nonlocal scale
        scale = np.clip(scale * rng.uniform(0.98, 1.02, len(scale)), 0.7, 1.3)
        model.update("load", "p_mw", p0 * scale)
        model.update("load", "q_mvar", q0 * scale)

    if args.emulator == "process":
        substation = _Remote(args.grid)
    else:
        substation = EmulatedSubstation(net, pm, users=PLANT_USERS)
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-sync-") as out:
        rec = Recorder(Path(out) / "run", flush_every=max(1, int(args.rate * 10)))
        async with substation as sub:
            mb = ModbusLink("127.0.0.1", sub.modbus_port, inputs)
            ua = OpcuaLink(
                sub.opcua_endpoint,
                outputs,
                user="plant",
                password="bench-plant",
                namespace=pm.namespace,
                timeout_s=5.0,
            )
            await mb.connect()
            await ua.connect()
            loop = SyncLoop(
                model,
                pm,
                [mb, ua],
                mode="hil",
                period_s=1.0 / args.rate,
                recorder=rec,
                deadline_policy=args.policy,
            )
            loop.listeners.append(walk)
            server = None
            if args.twin_server:
                # the twin's own OPC UA server: every bus, line, trafo and the inputs
                server = TwinServer(net, inputs)
                await server.start()
                server.attach(loop)
            # warm-up (first compile, first full write), not counted
            for k in range(3):
                await loop.step(-1.0 + k * 0.1)
            loop.reset_stats()
            t0 = time.perf_counter()
            n = await loop.run(duration_s=args.duration)
            wall = time.perf_counter() - t0
            st = loop.stats()
            durations = {ph: loop.phase_durations(ph) for ph in (*PHASES, "step")}
            await mb.close()
            await ua.close()
            if server is not None:
                await server.stop()
        rec.close()
    return {
        "grid": args.grid,
        "points": len(pm),
        "inputs": len(inputs),
        "outputs": len(outputs),
        "steps": n,
        "wall_s": wall,
        "stats": st,
        "durations": durations,
        "link_stats": {"modbus": dict(mb.stats), "opcua": dict(ua.stats)},
        "server_vars": len(server._vars) if server is not None else 0,
    }


def table(res: dict, args: argparse.Namespace) -> str:
    st = res["stats"]
    d = res["durations"]
    step = d["step"]
    lines = [
        f"Sync loop on {res['grid']}: {res['points']} points in the map "
        f"({res['inputs']} read over Modbus, "
        f"{res['outputs']} written over OPC UA), {args.rate:g} steps/s for {args.duration:g} s, "
        f"deadline policy {args.policy}, emulator {args.emulator}; {res['steps']} steps in "
        f"{res['wall_s']:.1f} s.",
        "",
        "| phase | p50 ms | p99 ms | max ms | mean ms | share of step (mean) |",
        "|---|---|---|---|---|---|",
    ]
    total_mean = float(step.mean()) if len(step) else float("nan")
    for ph in (*PHASES, "step"):
        v = d[ph]
        if not len(v):
            continue
        p50, p99 = np.percentile(v, [50, 99]) * 1e3
        share = float(v.mean()) / total_mean * 100 if ph != "step" else 100.0
        lines.append(
            f"| {ph} | {p50:.3f} | {p99:.3f} | {v.max() * 1e3:.3f} | {v.mean() * 1e3:.3f} | "
            f"{share:.1f} % |"
        )
    solve_share_p50 = float(np.median(d["solve"] / np.maximum(step, 1e-12))) * 100
    lf = d["solve"] + d["results"]
    lines += [
        "",
        f"- load-flow share of the step: {float(d['solve'].mean()) / total_mean * 100:.1f} % "
        f"(mean), {solve_share_p50:.1f} % (median of per-step shares); with the result "
        f"extraction (Solution.get of flows, pandapower's result code): "
        f"{float(lf.mean()) / total_mean * 100:.1f} %",
        f"- deadline misses: {st['misses']}, skipped ticks: {st['skipped_ticks']}, caught-up "
        f"ticks: {st['caught_up_ticks']}",
        f"- not converged: {st['not_converged']}, write errors: {st['write_errors']}, poll "
        f"errors: {st['poll_errors']}, stale steps: {st['stale_steps']}",
        f"- OPC UA link: {res['link_stats']['opcua'].get('writes')} writes, Modbus link: "
        f"{res['link_stats']['modbus'].get('reads')} block reads",
        f"- twin OPC UA server: {res['server_vars']} variables updated per step "
        "(the publish phase; 0: not run)",
        f"- targets: p99 step < 20 ms: {'met' if np.percentile(step, 99) * 1e3 < 20 else 'NOT met'}"
        f"; load flow < 10 %: "
        f"{'met' if float(d['solve'].mean()) / total_mean < 0.10 else 'NOT met'}; "
        f"zero misses: {'met' if st['misses'] == 0 else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="ieee118")
    parser.add_argument("--rate", type=float, default=10.0, help="steps per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of run")
    parser.add_argument("--policy", default="skip", choices=("skip", "catch_up", "stop"))
    parser.add_argument("--seed", type=int, default=118)
    parser.add_argument(
        "--no-twin-server",
        dest="twin_server",
        action="store_false",
        help="do not run the twin's own OPC UA server (publish phase)",
    )
    parser.add_argument(
        "--max-outputs",
        type=int,
        default=None,
        help="write only the first N generated measurement points (default: all)",
    )
    parser.add_argument(
        "--only-columns",
        nargs="+",
        default=None,
        help="write only measurement points of these columns (e.g. vm_pu)",
    )
    parser.add_argument(
        "--emulator",
        default="process",
        choices=("process", "inprocess"),
        help="run the emulated substation in its own process (default) or in the twin's loop",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = asyncio.run(run(args))
    print(table(res, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
