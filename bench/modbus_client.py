"""Modbus client cost: pymodbus 3.16.1's AsyncModbusTcpClient against our own (hil.links.mbap).

One round = what the Modbus link sends per city_day step: three coalesced reads (34 discrete
inputs, 124 and 107 input registers) and one FC16 write of two registers (the heartbeat), to a
minimal asyncio peer on 127.0.0.1 in the same process that answers ready-made frames (its
small cost is the same for both clients: the difference is the clients').
Rounds alternate between the clients in batches, so both see the same machine load; printed:
median wall and CPU (process_time) per round, and the load average.

    python bench/modbus_client.py [--rounds 2000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

READS = ((2, 0, 34), (4, 1160, 124), (4, 1286, 107))  # (function code, address, count)


async def main(args: argparse.Namespace) -> None:
    from pymodbus.client import AsyncModbusTcpClient

    from hil.links.mbap import MbapClient, read_pdu, write_registers_pdu

    class Peer(asyncio.Protocol):
        """A minimal server: answers each request with a ready-made response (zeros)."""

        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.t, self.buf = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while len(self.buf) >= 7:
                n = 6 + int.from_bytes(self.buf[4:6], "big")
                if len(self.buf) < n:
                    return
                frame, self.buf = self.buf[:n], self.buf[n:]
                fc, count = frame[7], int.from_bytes(frame[10:12], "big")
                if fc in (1, 2):
                    pdu = bytes([fc, (count + 7) // 8]) + bytes((count + 7) // 8)
                elif fc in (3, 4):
                    pdu = bytes([fc, 2 * count]) + bytes(2 * count)
                else:
                    pdu = frame[7:12]
                self.t.write(frame[:4] + (len(pdu) + 1).to_bytes(2, "big") + frame[6:7] + pdu)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    theirs = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
    await theirs.connect()
    ours = MbapClient()
    await ours.connect("127.0.0.1", port, timeout=2.0)
    pdus = [read_pdu(fc, a, n) for fc, a, n in READS]
    fns = {2: theirs.read_discrete_inputs, 4: theirs.read_input_registers}

    async def round_theirs() -> None:
        for fc, a, n in READS:
            rr = await fns[fc](a, count=n, device_id=1)
            assert not rr.isError()
        rr = await theirs.write_registers(0, [1, 2], device_id=1)
        assert not rr.isError()

    async def round_ours() -> None:
        for pdu in pdus:
            rr = await ours.request(1, pdu, 2.0)
            assert not rr.isError()
        rr = await ours.request(1, write_registers_pdu(0, [1, 2]), 2.0)
        assert not rr.isError()

    times: dict[str, tuple[list[float], list[float]]] = {"pymodbus": ([], []), "ours": ([], [])}
    load0 = os.getloadavg()
    done = 0
    while done < args.rounds:
        for name, fn in (("pymodbus", round_theirs), ("ours", round_ours)):
            wall, cpu = times[name]
            for _ in range(args.batch):
                w0, c0 = time.perf_counter(), time.process_time()
                await fn()
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
        done += args.batch
    load1 = os.getloadavg()
    theirs.close()
    ours.close()
    server.close()
    await server.wait_closed()
    print(
        f"Modbus client cost per city_day round (3 reads + 1 write, a minimal peer in-process), "
        f"{args.rounds} rounds each, alternating in batches of {args.batch}; load average "
        f"{'/'.join(f'{x:.2f}' for x in load0)} before, {'/'.join(f'{x:.2f}' for x in load1)} "
        "after.\n"
    )
    print("| client | wall p50 ms | wall p90 ms | CPU mean ms |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in times.items():
        q = statistics.quantiles(wall, n=10)
        print(
            f"| {name} | {statistics.median(wall) * 1e3:.3f} | {q[-1] * 1e3:.3f} | "
            f"{statistics.fmean(cpu) * 1e3:.3f} |"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--batch", type=int, default=100)
    asyncio.run(main(p.parse_args()))
