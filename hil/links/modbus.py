"""Modbus TCP field link (pymodbus 3.16.1 ``AsyncModbusTcpClient``).

- Inputs are polled in coalesced blocks: neighbouring points of one unit and table become one
  request (at most 125 registers or 2000 bits).
- One request in flight per connection (an ``asyncio.Lock``): the pymodbus client does not check
  transaction ids, so concurrent requests could pair a response with the wrong request.
- Reconnection is managed here, not by pymodbus (its ``reconnect_delay=0`` is off; a 0 delay once
  caused a busy loop): a supervisor task retries with a bounded exponential backoff, each attempt
  on a fresh client object.
- Modbus carries no timestamps: a value's timestamp is the time its response arrived.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from hil.errors import CommsLost, HilTimeout, ProtocolError
from hil.links.base import FieldLink
from twin.pointmap import Point, decode_registers, encode_registers
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

MAX_REGISTERS = 125  # per read request (Modbus spec, function codes 3 and 4)
MAX_BITS = 2000  # per read request (function codes 1 and 2)
MAX_WRITE_REGISTERS = 123  # per write request (function code 16)
MAX_WRITE_BITS = 1968  # per write request (function code 15)

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: Exception codes a server answers for a point it does not serve as good (04 device failure:
#: invalid; 0B gateway target failed to respond: comms lost), not faults of the request.
_NOT_SERVED = (0x04, 0x0B)
_READ_FN = {
    "coil": "read_coils",
    "discrete_input": "read_discrete_inputs",
    "input_register": "read_input_registers",
    "holding_register": "read_holding_registers",
}


@dataclass(frozen=True)
class Block:
    """One coalesced read: ``count`` registers/bits from ``address`` of ``table`` on ``unit``."""

    unit: int
    table: str
    address: int
    count: int
    points: tuple[Point, ...]


def coalesce(points: Iterable[Point], *, max_gap: int = 0) -> list[Block]:
    """Group points into read blocks per unit and table, merging neighbours.

    Points merge when the gap between them is at most ``max_gap`` registers/bits (0: only
    contiguous or overlapping points) and the block stays within 125 registers / 2000 bits.
    """
    groups: dict[tuple[int, str], list[Point]] = {}
    for p in points:
        if p.modbus is None:
            continue
        groups.setdefault((p.modbus.unit, p.modbus.table), []).append(p)
    blocks: list[Block] = []
    for (unit, table), pts in sorted(groups.items()):
        limit = MAX_BITS if table in ("coil", "discrete_input") else MAX_REGISTERS
        pts.sort(key=lambda q: q.modbus.address)  # type: ignore[union-attr]
        start = end = -1
        members: list[Point] = []
        for p in pts:
            b = p.modbus
            assert b is not None
            p_end = b.address + b.count
            if members and b.address - end <= max_gap and max(end, p_end) - start <= limit:
                members.append(p)
                end = max(end, p_end)
                continue
            if members:
                blocks.append(Block(unit, table, start, end - start, tuple(members)))
            start, end, members = b.address, p_end, [p]
        if members:
            blocks.append(Block(unit, table, start, end - start, tuple(members)))
    return blocks


class ModbusLink(FieldLink):
    """A Modbus TCP client link to one device (one connection, several unit ids).

    Args:
        host, port: the device (or gateway).
        points: the points this link carries; each needs a Modbus binding.
        timeout_s: per-request (and connect) timeout.
        poll_interval_s: when set, a background task polls inputs at this period; otherwise the
            owner (the sync loop) calls :meth:`poll`.
        backoff_min_s, backoff_max_s: reconnect delay, doubling from min up to max.
        max_gap: registers/bits a read block may skip to merge two points.
        tls: Modbus/TCP Security (:class:`hil.security.modbus_tls.ModbusTls`): mutual TLS
            with the link's certificate; the server's certificate must be in ``tls.trust``.
    """

    protocol = "modbus"
    _log = _log

    def __init__(
        self,
        host: str,
        port: int,
        points: Iterable[Point],
        *,
        timeout_s: float = 1.0,
        poll_interval_s: float | None = None,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
        max_gap: int = 0,
        stale_factor: float = 3.0,
        clock: Callable[[], float] | None = None,
        name: str | None = None,
        tls: Any = None,
    ) -> None:
        pts = tuple(points)
        missing = [p.name for p in pts if p.modbus is None]
        if missing:
            raise ValueError(
                f"modbus link {host}:{port}: expected points with a Modbus binding, "
                f"found none on {', '.join(missing[:5])}"
            )
        super().__init__(
            name or f"modbus:{host}:{port}",
            pts,
            stale_factor=stale_factor,
            clock=clock,
            backoff_min_s=backoff_min_s,
            backoff_max_s=backoff_max_s,
        )
        self.host = host
        self.port = int(port)
        self.tls = tls
        self._sslctx = tls.client_context() if tls is not None else None
        self.timeout_s = float(timeout_s)
        self.poll_interval_s = poll_interval_s
        self.blocks: list[Block] = coalesce(self.inputs, max_gap=max_gap)
        #: point -> (the words last decoded, value, quality): unchanged words are not decoded
        self._decoded: dict[str, tuple[tuple[int, ...], float, Quality]] = {}
        self.stats["requests"] = 0
        self.stats["reconnect_attempts"] = 0
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()

    @property
    def polled(self) -> bool:
        return not self.poll_interval_s

    # --- connection ----------------------------------------------------------------------------
    def _new_client(self) -> AsyncModbusTcpClient:
        self._generation += 1
        gen = self._generation

        def on_connect(up: bool) -> None:
            # only the current client may report a loss, never one we already dropped
            if not up and gen == self._generation and not self._closing and self.connected:
                self._lost("connection closed by the peer")

        if self._sslctx is not None:
            return AsyncModbusTlsClient(
                self.host,
                port=self.port,
                sslctx=self._sslctx,
                timeout=self.timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=on_connect,
            )
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,  # a retry would double every timeout; the next poll is the retry
            reconnect_delay=0,  # reconnection is ours (see module docstring)
            trace_connect=on_connect,
        )

    async def _open(self) -> AsyncModbusTcpClient:
        client = self._new_client()
        try:
            ok = await asyncio.wait_for(client.connect(), self.timeout_s + 1.0)
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            raise CommsLost(f"{self.name}: expected a Modbus TCP server, found {exc!r}") from exc
        except BaseException:  # cancelled (close() during a reconnect): leave nothing open
            client.close()
            raise
        if not ok or not client.connected:
            client.close()
            tls = (
                f" (Modbus/TLS: or the handshake failed: is the server's certificate in "
                f"{self.tls.trust}? trust it with `gridtwin certs trust SERVER.der --pki "
                f"{self.tls.trust.parent}`)"
                if self.tls is not None
                else ""
            )
            raise CommsLost(
                f"{self.name}: expected a Modbus TCP server at {self.host}:{self.port}, "
                f"connection refused or timed out{tls}"
            )
        return client

    async def connect(self) -> None:
        """Connect and start the poll task (if any). Raises CommsLost when the device is down."""
        self._closing = False
        if self.connected:
            return
        await self._stop_reconnecting()
        self._adopt(await self._open())
        _log.info("%s connected", self.name)
        if self.poll_interval_s:
            self._start_polling()

    async def close(self) -> None:
        await self._shut_down()

    def _discard(self, client: AsyncModbusTcpClient) -> None:
        client.close()

    # --- requests ------------------------------------------------------------------------------
    async def _call(self, what: str, fn: str, *args: Any, **kw: Any) -> Any:
        """One request under the connection lock; maps transport failures to HilError."""
        async with self._lock:
            client = self._client
            if client is None or not self.connected or not client.connected:
                raise CommsLost(f"{self.name}: {what}: expected a connected link, found it down")
            self.stats["requests"] += 1
            try:
                return await asyncio.wait_for(
                    getattr(client, fn)(*args, **kw), self.timeout_s + 0.5
                )
            except (TimeoutError, ModbusIOException) as exc:
                self._note_error(exc)
                # a request without an answer leaves the stream in an unknown state: start over
                self._lost(f"{what}: no answer")
                raise HilTimeout(f"{self.name}: {what}", self.timeout_s) from exc
            except (ConnectionException, OSError) as exc:
                self._note_error(exc)
                self._lost(str(exc))
                raise CommsLost(f"{self.name}: {what}: connection lost ({exc})") from exc

    def _check_response(self, rr: Any, point: Point, what: str) -> None:
        if rr.isError():
            code = int(getattr(rr, "exception_code", 0) or 0)
            err = ProtocolError(
                "modbus",
                code,
                f"{what} on {self.name} answered exception {code} "
                f"({_EXCEPTION_NAMES.get(code, 'unknown')})",
                point=point.name,
            )
            self._note_error(err)
            raise err

    async def poll(self) -> None:
        """Read every input block now and cache the values.

        All blocks are tried; a block answered with an exception marks its points INVALID and the
        first such ProtocolError is raised at the end. A lost connection raises CommsLost at once.
        """
        first_error: ProtocolError | None = None
        not_served_error: ProtocolError | None = None  # 04/0B: a point quality, see below
        any_good = False
        for blk in self.blocks:
            fn = {
                "coil": "read_coils",
                "discrete_input": "read_discrete_inputs",
                "input_register": "read_input_registers",
                "holding_register": "read_holding_registers",
            }[blk.table]
            what = f"read {blk.table} {blk.address}+{blk.count} unit {blk.unit}"
            rr = await self._call(what, fn, blk.address, count=blk.count, device_id=blk.unit)
            t = self.clock()
            if rr.isError() and int(getattr(rr, "exception_code", 0) or 0) in _NOT_SERVED:
                # the server does not serve a point that is not good (issue 11: 04 invalid,
                # 0B comms lost): one point failed the block; read its points one by one
                err, not_served, good = await self._poll_points(blk, fn)
                first_error = first_error or err
                not_served_error = not_served_error or not_served
                any_good = any_good or good
                continue
            try:
                self._check_response(rr, blk.points[0], what)
            except ProtocolError as exc:
                for p in blk.points:
                    old = self._cache.get(p.name)
                    self._store_input(
                        p.name,
                        Sample(old.value if old else math.nan, Quality.INVALID, t),
                        notify=False,
                    )
                first_error = first_error or exc
                continue
            self.stats["reads"] += 1
            any_good = True
            store = self._store_input
            q_good = Quality.GOOD
            if blk.table in ("coil", "discrete_input"):
                bits = rr.bits
                for p in blk.points:
                    b = p.modbus
                    assert b is not None
                    value = 1.0 if bits[b.address - blk.address] else 0.0
                    store(p.name, Sample(value, q_good, t), notify=False)
                continue
            regs = rr.registers
            memo = self._decoded
            for p in blk.points:
                b = p.modbus
                assert b is not None
                off = b.address - blk.address
                words = tuple(regs[off : off + b.count])
                hit = memo.get(p.name)
                if hit is not None and hit[0] == words:
                    sample = Sample(hit[1], hit[2], t)
                else:
                    sample = Sample.good(decode_registers(p, words), t)
                    memo[p.name] = (words, sample.value, sample.quality)
                store(p.name, sample, notify=False)
        self._notify()
        if first_error is not None:
            raise first_error
        if not_served_error is not None and not any_good:
            raise not_served_error  # nothing at all was served: the device, not one point

    async def _poll_points(
        self, blk: Block, fn: str
    ) -> tuple[ProtocolError | None, ProtocolError | None, bool]:
        """Read a block's points one at a time: 04 -> INVALID, 0B -> COMMS_LOST, else the value.

        Returns the first other protocol error, the first 04/0B error, and whether any point
        was read."""
        first_error: ProtocolError | None = None
        not_served: ProtocolError | None = None
        good = False
        for p in blk.points:
            b = p.modbus
            assert b is not None
            what = f"read {blk.table} {b.address}+{b.count} unit {blk.unit}"
            rr = await self._call(what, fn, b.address, count=b.count, device_id=blk.unit)
            t = self.clock()
            code = int(getattr(rr, "exception_code", 0) or 0) if rr.isError() else 0
            if code:
                old = self._cache.get(p.name)
                q = Quality.COMMS_LOST if code == 0x0B else Quality.INVALID
                self._store_input(
                    p.name, Sample(old.value if old else math.nan, q, t), notify=False
                )
                try:
                    self._check_response(rr, p, what)
                except ProtocolError as exc:
                    if code in _NOT_SERVED:
                        not_served = not_served or exc
                    else:
                        first_error = first_error or exc
                continue
            self.stats["reads"] += 1
            good = True
            if blk.table in ("coil", "discrete_input"):
                value = 1.0 if rr.bits[0] else 0.0
            else:
                value = decode_registers(p, list(rr.registers[: b.count]))
            self._store_input(p.name, Sample.good(value, t), notify=False)
        return first_error, not_served, good

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        """Read points (outputs too) one request each: reconcile after a return (issue 11)."""
        out: dict[str, Sample] = {}
        for name in names:
            p = self.point(name)
            b = p.modbus
            assert b is not None
            fn = _READ_FN[b.table]
            what = f"read back {b.table} {b.address}+{b.count} unit {b.unit}"
            rr = await self._call(what, fn, b.address, count=b.count, device_id=b.unit)
            t = self.clock()
            if rr.isError():
                out[name] = Sample(math.nan, Quality.INVALID, t)
            elif b.table in ("coil", "discrete_input"):
                out[name] = Sample.good(1.0 if rr.bits[0] else 0.0, t)
            else:
                out[name] = Sample.good(decode_registers(p, list(rr.registers[: b.count])), t)
        return out

    # --- writes --------------------------------------------------------------------------------
    def _not_writable(self, point: Point) -> str | None:
        b = point.modbus
        if b is None:
            return f"expected a Modbus binding on link {self.name}, found none"
        if b.table not in ("coil", "holding_register"):
            return f"expected a coil or holding register to write, found {b.table} (read-only)"
        return None

    async def _send(self, items: list[tuple[Point, float]]) -> None:
        """Coalesced writes: contiguous coils in one FC15, contiguous registers in one FC16."""
        cells: dict[tuple[int, str], dict[int, tuple[Point, int | bool]]] = {}
        for p, v in items:
            b = p.modbus
            assert b is not None
            table = cells.setdefault((b.unit, b.table), {})
            if b.table == "coil":
                table[b.address] = (p, bool(round(v)))
            else:
                for i, word in enumerate(encode_registers(p, v)):
                    table[b.address + i] = (p, word)
        for (unit, table_name), by_addr in sorted(cells.items()):
            limit = MAX_WRITE_BITS if table_name == "coil" else MAX_WRITE_REGISTERS
            run: list[int] = []
            for addr in sorted(by_addr):
                if run and (addr != run[-1] + 1 or len(run) >= limit):
                    await self._write_run(unit, table_name, run, by_addr)
                    run = []
                run.append(addr)
            if run:
                await self._write_run(unit, table_name, run, by_addr)

    async def _write_run(
        self, unit: int, table: str, run: list[int], by_addr: dict[int, tuple[Point, Any]]
    ) -> None:
        first = by_addr[run[0]][0]
        values = [by_addr[a][1] for a in run]
        what = f"write {table} {run[0]}+{len(run)} unit {unit}"
        if table == "coil":
            if len(values) == 1:
                rr = await self._call(what, "write_coil", run[0], values[0], device_id=unit)
            else:
                rr = await self._call(what, "write_coils", run[0], values, device_id=unit)
        else:  # FC16 even for one register: float32 points span two anyway
            rr = await self._call(what, "write_registers", run[0], values, device_id=unit)
        self._check_response(rr, first, what)
        self.stats["writes"] += 1
