"""A small asyncio TCP fault proxy between a client and a server, on 127.0.0.1 only.

``FaultProxy(target_port)`` listens on a free loopback port and forwards every connection to
``127.0.0.1:target_port``. The mode is switched at run time (:meth:`FaultProxy.set_mode`):

- ``pass``: forward bytes both ways.
- ``drop``: close every connection now and every new one at once (a pulled cable noticed).
- ``delay``: forward, each chunk ``delay_s`` late.
- ``blackhole``: accept, swallow every byte both ways, answer nothing (a hung link).
- ``cut``: forward the next chunk from the server only half (a frame cut mid-way), then
  swallow everything on that connection.
- ``garble``: forward with the server's bytes XOR-ed (a noisy line).
- ``half_open``: the server's side closes, the client's side stays open and is never answered
  (a peer that rebooted while the client did not notice).

Used by ``tests/hil/test_faults.py`` and ``bench/faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

MODES = ("pass", "drop", "delay", "blackhole", "cut", "garble", "half_open")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` with a fault mode."""

    def __init__(self, target_port: int, *, port: int = 0, delay_s: float = 0.5) -> None:
        self.target_port = int(target_port)
        self.port = int(port) or free_port()
        self.delay_s = float(delay_s)
        self.mode = "pass"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._close_all()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"fault mode: expected one of {', '.join(MODES)}, found {mode!r}")
        self.mode = mode
        if mode == "drop":
            self._close_all()
        elif mode == "half_open":
            for _, up in list(self._pairs):
                if up is not None:
                    up.close()

    def _close_all(self) -> None:
        for down, up in list(self._pairs):
            down.close()
            if up is not None:
                up.close()
        self._pairs.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode in ("drop", "half_open"):
            if self.mode == "drop":
                writer.close()
                return
        up_r: asyncio.StreamReader | None = None
        up_w: asyncio.StreamWriter | None = None
        if self.mode not in ("blackhole", "half_open"):
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                writer.close()
                return
        pair = (writer, up_w)
        self._pairs.add(pair)
        tasks = [asyncio.create_task(self._pump(reader, up_w, to_server=True))]
        if up_r is not None:
            tasks.append(asyncio.create_task(self._pump(up_r, writer, to_server=False)))
        for t in tasks:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._pairs.discard(pair)
            writer.close()
            if up_w is not None:
                up_w.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, *, to_server: bool
    ) -> None:
        cut_done = False
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            while True:
                data = await src.read(65536)
                if not data:
                    return
                mode = self.mode
                if mode in ("blackhole", "half_open") or dst is None or cut_done:
                    continue  # swallowed
                if mode == "delay":
                    await asyncio.sleep(self.delay_s)
                elif mode == "cut" and not to_server:
                    data = data[: max(1, len(data) // 2)]
                    cut_done = True
                elif mode == "garble" and not to_server:
                    data = bytes(b ^ 0x5A for b in data)
                dst.write(data)
                await dst.drain()


# --- a fault rig: wall-clock emulator, the twin's sync loop, one link through the proxy --------
class FaultRig:
    """An emulated substation on the wall clock (device watchdog ``watchdog_s``), the twin's
    sync loop stepping every ``period_s`` with one link (``protocol``) through a FaultProxy.

    ``run(mode)`` injects a fault, holds it ``hold_s``, clears it and returns what was seen:
    detection (link down), safe state (inverter ``PV`` heartbeat lost), recovery (link up,
    reconciled, heartbeat back), the quality transitions of a twin input and of a value the
    twin served, inputs applied as GOOD though older than the fault, steps and records.
    """

    def __init__(self, net, protocol: str, *, watchdog_s: float = 1.0, period_s: float = 0.2):
        self.net, self.protocol = net, protocol
        self.watchdog_s, self.period_s = float(watchdog_s), float(period_s)

    async def __aenter__(self) -> FaultRig:
        import warnings

        from hil.emulator.devices import DeviceSettings
        from hil.emulator.substation import EmulatedSubstation
        from hil.links.modbus import ModbusLink
        from hil.links.opcua import OpcuaLink
        from hil.sync import SyncLoop
        from twin.model import GridModel
        from twin.pointmap import generate_pointmap

        self.pm = pm = generate_pointmap(self.net, mode="hil")
        self.sub = EmulatedSubstation(
            self.net,
            pm,
            users={"plant": ("plant-pw", "plant")},
            device_settings=DeviceSettings(comms_timeout_s=self.watchdog_s),
        )
        await self.sub.start()
        port = self.sub.modbus_port if self.protocol == "modbus" else self.sub.opcua_port
        self.proxy = await FaultProxy(port).start()
        outputs = [p for p in pm.points if p.direction == "to_field" and p.kind == "measurement"]
        if self.protocol == "modbus":
            # inputs and the heartbeat over Modbus (the proxied link); the measurements the
            # twin computes over a direct OPC UA plant link (Modbus writes act as operator)
            carried = [p for p in pm.points if p not in outputs]
            self.link = ModbusLink(
                "127.0.0.1", self.proxy.port, carried, timeout_s=0.5, backoff_max_s=0.5
            )
            self.other = OpcuaLink(
                self.sub.opcua_endpoint,
                outputs,
                user="plant",
                password="plant-pw",
                namespace=pm.namespace,
                watchdog_s=0.3,
                timeout_s=1.0,
                backoff_max_s=0.5,
            )
            links = [self.link, self.other]
        else:
            endpoint = self.sub.opcua_endpoint.replace(
                f":{self.sub.opcua_port}/", f":{self.proxy.port}/"
            )
            self.link = OpcuaLink(
                endpoint,
                list(pm.points),
                mode="poll",
                user="plant",
                password="plant-pw",
                namespace=pm.namespace,
                watchdog_s=0.3,
                timeout_s=1.0,
                backoff_max_s=0.5,
            )
            self.other = None
            links = [self.link]
        for lk in links:
            await lk.connect()
        self.links = links
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = GridModel(self.net)
        self.loop = SyncLoop(self.model, pm, links, mode="hil", period_s=self.period_s)
        self.inverter = next(d for d in self.sub.devices if d.kind == "inverter")
        self.steps = self.step_errors = 0
        self._stopping = False
        self._task = asyncio.create_task(self._drive())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # stop the driver: a flag it checks between steps, and cancellation repeated (bounded):
        # Python 3.11's wait_for can swallow a cancel that lands as its inner future completes
        self._stopping = True
        for _ in range(100):
            self._task.cancel()
            done, _pending = await asyncio.wait([self._task], timeout=0.1)
            if done:
                break
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.wait_for(self.loop.drain(), 30.0)
        for lk in self.links:
            await lk.close()
        await self.proxy.stop()
        await self.sub.stop()

    async def _drive(self) -> None:
        import time

        while not self._stopping:
            try:
                await self.loop.step(time.time())
                self.steps += 1
            except Exception:  # counted: a fault must never break a step
                self.step_errors += 1
            await asyncio.sleep(self.period_s)

    async def wait(self, cond, timeout_s: float) -> bool:
        """Bounded wait for ``cond()``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            if cond():
                return True
            await asyncio.sleep(0.02)
        return bool(cond())

    async def run(self, mode: str, *, hold_s: float | None = None) -> dict:
        import time

        from twin.quality import Quality

        hold_s = 4.0 * self.watchdog_s + 3.0 if hold_s is None else hold_s
        inv = self.inverter
        ok = await self.wait(lambda: inv._beat_at is not None and self.link.connected, 20.0)
        assert ok, "the rig did not start beating"
        in_name = f"{inv.name}.p_mw"  # an input the twin reads over the proxied link
        served = next(
            p.name for p in self.pm.points if p.direction == "to_field" and p.kind == "measurement"
        )
        seen_in, seen_served = (
            [self.loop.samples[in_name].quality.value],
            [self.sub.store.get(served).quality.value],
        )
        reconciled0 = len(self.loop.reconciled)
        t0 = time.time()
        self.proxy.set_mode(mode)
        detected = safe = None
        stale_good = 0
        end = t0 + hold_s
        while time.time() < end:
            now = time.time()
            if detected is None and not self.link.connected:
                detected = now - t0
            if safe is None and inv.heartbeat_lost:
                safe = now - t0
            q_in = self.loop.samples[in_name].quality
            s_in = self.loop.samples[in_name]
            # GOOD though neither stamped nor (OPC UA poll) read back since before the fault
            old = t0 - 3.0 * self.pm[in_name].interval_s
            read_at = getattr(self.link, "polled_at", None)
            if q_in is Quality.GOOD and s_in.timestamp < old and (read_at or 0.0) < old:
                stale_good += 1
            for seen, q in ((seen_in, q_in), (seen_served, self.sub.store.get(served).quality)):
                if seen[-1] != q.value:
                    seen.append(q.value)
            await asyncio.sleep(0.02)
        self.proxy.set_mode("pass")
        t1 = time.time()
        back = (
            await self.wait(
                lambda: (
                    self.link.connected
                    and len(self.loop.reconciled) > reconciled0
                    and not inv.heartbeat_lost
                ),
                30.0,
            )
            if detected is not None
            else await self.wait(lambda: not inv.heartbeat_lost, 10.0)
        )
        recovery = time.time() - t1 if back else None
        await asyncio.sleep(2 * self.period_s)
        for seen, q in (
            (seen_in, self.loop.samples[in_name].quality),
            (seen_served, self.sub.store.get(served).quality),
        ):
            if seen[-1] != q.value:
                seen.append(q.value)
        return {
            "fault": mode,
            "protocol": self.protocol,
            "detected_s": detected,
            "safe_s": safe,
            "safe_p_mw": self.sub.store.get(f"{inv.name}.p_mw").value if safe else None,
            "recovery_s": recovery,
            "input_qualities": seen_in,
            "served_qualities": seen_served,
            "stale_applied_good": stale_good,
            "steps": self.steps,
            "step_errors": self.step_errors,
            "reconciled": list(self.loop.reconciled)[reconciled0:],
        }
