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
                         [--max-outputs N] [--write-mode await|pipelined]

``--write-mode pipelined`` lets a step send its Write request and go on; the emulator's time to
process it (decoding and storing every value, in its own process) is then reported as
"write_ack" instead of being part of the step.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
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


def _audit_to_file(sub, folder: str) -> None:
    """Stream the substation's audit log to a file, as ``gridtwin emulate --audit`` and every
    scenario do. Kept in memory instead, the log trims itself on every write once it holds
    100,000 records (about 15 s of this benchmark): each trim scans the whole buffer, and the
    ~700 records of one Write request then block the emulator's event loop for 5-8 s (its
    Modbus reads time out, then the OPC UA write)."""
    from hil.security.audit import audit_log

    audit_log(sub.store).stream_to(Path(folder) / "audit.jsonl")


def _emulator_process(grid: str, conn, gc_freeze: bool = True, audit: str = "file") -> None:
    """Child process: serve the emulated substation until the parent says stop."""
    from hil.emulator.substation import EmulatedSubstation

    async def serve() -> None:
        net, pm = _build(grid)
        async with EmulatedSubstation(net, pm, users=PLANT_USERS) as sub:
            if audit == "file":
                _audit_to_file(sub, folder)
            if gc_freeze:  # as in the twin's process (see run())
                gc.collect()
                gc.freeze()
            conn.send((sub.opcua_endpoint, sub.modbus_port))
            while not conn.poll():
                await asyncio.sleep(0.2)

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-emulator-") as folder:
        asyncio.run(serve())


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc; 0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Remote:
    """The emulated substation in its own process (its CPU is not the twin's)."""

    def __init__(self, grid: str, gc_freeze: bool = True, audit: str = "file") -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_emulator_process, args=(grid, child, gc_freeze, audit), daemon=True
        )

    async def __aenter__(self):
        self._proc.start()
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self._conn.poll, 120.0)
        if not ready:
            raise RuntimeError("emulated substation process did not start within 120 s")
        self.opcua_endpoint, self.modbus_port = self._conn.recv()
        self.pid = self._proc.pid
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
    import pyarrow.parquet  # noqa: F401 - the recorder's first flush would import it mid-run

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
        substation = _Remote(args.grid, args.gc_freeze, args.audit)
    else:
        substation = EmulatedSubstation(net, pm, users=PLANT_USERS)
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-sync-") as out:
        rec = Recorder(Path(out) / "run", flush_every=max(1, int(args.rate * 10)))
        async with substation as sub:
            if args.emulator != "process" and args.audit == "file":
                _audit_to_file(sub, out)
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
                write_mode=args.write_mode,
            )
            loop.listeners.append(walk)
            server = None
            if args.twin_server:
                # the twin's own OPC UA server: every bus, line, trafo and the inputs
                server = TwinServer(net, inputs)
                await server.start()
                server.attach(loop, background=args.publish == "background")
            # warm-up (first compile, first full write), not counted
            for k in range(3):
                await loop.step(-1.0 + k * 0.1)
            loop.reset_stats()
            if args.gc_freeze:
                # everything built so far (pandapower, both OPC UA address spaces) lives for the
                # whole run: keep it out of the collector's full passes, which otherwise stall
                # the event loop for ~0.2 s every few hundred steps
                gc.collect()
                gc.freeze()
            pauses = _GcPauses()
            load_before = os.getloadavg()
            cpu0 = (time.process_time(), _cpu_s(getattr(sub, "pid", None)))
            t0 = time.perf_counter()
            n = await loop.run(duration_s=args.duration)
            wall = time.perf_counter() - t0
            cpu = (time.process_time() - cpu0[0], _cpu_s(getattr(sub, "pid", None)) - cpu0[1])
            load_after = os.getloadavg()
            pauses.stop()
            st = loop.stats()
            durations = {ph: loop.phase_durations(ph) for ph in (*PHASES, "step", "write_ack")}
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
        "publish_s": np.array(server.publish_durations[-max(1, n) :]) if server else np.zeros(0),
        "publish_skipped": server.publish_skipped if server is not None else 0,
        "load": (load_before, load_after),
        "cpu_s": cpu,
        "gc": pauses.summary(),
        "cpus": os.cpu_count(),
    }


def table(res: dict, args: argparse.Namespace) -> str:
    st = res["stats"]
    d = res["durations"]
    step = d["step"]
    lines = [
        f"Sync loop on {res['grid']}: {res['points']} points in the map "
        f"({res['inputs']} read over Modbus, "
        f"{res['outputs']} written over OPC UA), {args.rate:g} steps/s for {args.duration:g} s, "
        f"deadline policy {args.policy}, write mode {args.write_mode}, emulator {args.emulator} "
        f"(audit log in {args.audit}); "
        f"{res['steps']} steps in {res['wall_s']:.1f} s. Machine: {res['cpus']} CPUs, load "
        f"average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in res['load'][0])} before, "
        f"{'/'.join(f'{x:.2f}' for x in res['load'][1])} after.",
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
        f"extraction (Solution.get of the point map's columns): "
        f"{float(lf.mean()) / total_mean * 100:.1f} %",
        f"- deadline misses: {st['misses']}, skipped ticks: {st['skipped_ticks']}, caught-up "
        f"ticks: {st['caught_up_ticks']}; recorder row groups written between steps: "
        f"{st['idle_flushes']}",
        _ack_line(d["write_ack"], st, args),
        f"- CPU time per step (not inflated by waiting for a core on a shared machine): twin "
        f"process {res['cpu_s'][0] / max(res['steps'], 1) * 1e3:.2f} ms"
        + (
            f", emulator process {res['cpu_s'][1] / max(res['steps'], 1) * 1e3:.2f} ms"
            if args.emulator == "process"
            else " (emulator included)"
        ),
        f"- garbage collector: {res['gc']}"
        + (" (start-up objects frozen with gc.freeze())" if args.gc_freeze else ""),
        f"- not converged: {st['not_converged']}, write errors: {st['write_errors']}, poll "
        f"errors: {st['poll_errors']}, stale steps: {st['stale_steps']}",
        f"- OPC UA link: {res['link_stats']['opcua'].get('writes')} writes, Modbus link: "
        f"{res['link_stats']['modbus'].get('reads')} block reads",
        _publish_line(res, args),
        f"- targets: p99 step < 20 ms: {'met' if np.percentile(step, 99) * 1e3 < 20 else 'NOT met'}"
        f"; load flow < 10 %: "
        f"{'met' if float(d['solve'].mean()) / total_mean < 0.10 else 'NOT met'}; "
        f"zero misses: {'met' if st['misses'] == 0 else 'NOT met'}",
    ]
    return "\n".join(lines)


class _GcPauses:
    """Time spent in the garbage collector during the run, per generation."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._t0)

    def stop(self) -> None:
        gc.callbacks.remove(self._cb)

    def summary(self) -> str:
        parts = []
        for gen, p in self.pauses.items():
            if p:
                parts.append(f"gen{gen} {len(p)} runs, max {max(p) * 1e3:.1f} ms")
            else:
                parts.append(f"gen{gen} 0 runs")
        return "; ".join(parts)


def _publish_line(res: dict, args: argparse.Namespace) -> str:
    pub = res["publish_s"]
    if not res["server_vars"] or not len(pub):
        return "- twin OPC UA server: not run"
    p50, p99 = np.percentile(pub, [50, 99]) * 1e3
    where = (
        "as a task after the step (the publish phase only starts it)"
        if args.publish == "background"
        else "inside the step (the publish phase)"
    )
    return (
        f"- twin OPC UA server: {res['server_vars']} variables, changed values written {where}; "
        f"publication p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {pub.max() * 1e3:.2f} ms; skipped "
        f"(previous still running): {res['publish_skipped']}"
    )


def _ack_line(ack: np.ndarray, st: dict, args: argparse.Namespace) -> str:
    if args.write_mode != "pipelined" or not len(ack):
        return "- write mode await: the write phase includes the emulator's processing"
    p50, p99 = np.percentile(ack, [50, 99]) * 1e3
    return (
        f"- pipelined writes: send-to-response time (emulator decoding and storing, off the "
        f"step) p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ack.max() * 1e3:.1f} ms; steps whose "
        f"write was skipped because the previous was still in flight: {st['writes_busy']}"
    )


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
    parser.add_argument(
        "--write-mode",
        default="await",
        choices=("await", "pipelined"),
        help="SyncLoop write_mode: wait for the write response in the step, or collect it in "
        "the next step",
    )
    parser.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not gc.freeze() the objects built before the run",
    )
    parser.add_argument(
        "--publish",
        default="step",
        choices=("step", "background"),
        help="twin server publication inside the step, or as a task after it",
    )
    parser.add_argument(
        "--audit",
        default="file",
        choices=("file", "memory"),
        help="the emulator's audit log streamed to a file (default, as `gridtwin emulate "
        "--audit` and scenarios) or kept in memory",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    res = asyncio.run(run(args))
    print(table(res, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
