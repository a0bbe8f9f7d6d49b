"""Modbus TCP field link over our own asyncio client (:mod:`hil.links.mbap`).

- Inputs are polled in coalesced blocks: neighbouring points of one unit and table become one
  request (at most 125 registers or 2000 bits), each block's request PDU built once; a block
  whose answer did not change is not decoded again.
- One request in flight per connection (an ``asyncio.Lock``); responses are paired with their
  request by transaction id (pymodbus's client did not check them, FIELD-NOTES).
- Reconnection is managed here: a supervisor task retries with a bounded exponential backoff,
  each attempt on a fresh client object.
- Modbus carries no timestamps: a value's timestamp is the time its response arrived.
- The vectorised path (default; ``GRIDTWIN_BULK=0`` or ``bulk=False`` runs the per-point
  reference): the inputs' values, quality codes and timestamps live in arrays, a block's
  registers are decoded in one :class:`twin.pointmap.BlockCodec` pass (a reader prepared per
  block), and the sync loop takes the arrays (:meth:`ModbusLink.input_arrays`). Both paths
  give the same samples.
- ``max_in_flight`` > 1 pipelines a poll's block reads (that many requests sent back to back,
  paired by transaction id): for servers known to take them, e.g. the emulated substation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hil.errors import CommsLost, HilTimeout, ProtocolError
from hil.links.base import FieldLink, InputArrays
from hil.links.mbap import (
    MbapClient,
    Response,
    read_pdu,
    write_coil_pdu,
    write_coils_pdu,
    write_registers_pdu,
)
from hil.store import COMMS_LOST, GOOD, INVALID, QUALITIES, QUALITY_CODE, bulk_enabled
from twin.pointmap import BlockCodec, BlockReader, Point, decode_registers, encode_registers
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

_STALE = QUALITY_CODE[Quality.STALE]

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
_READ_FC = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}
_BIT_TABLES = ("coil", "discrete_input")


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
        max_in_flight: read requests of one poll sent back to back before the first answer
            (1: one at a time, for any device; more only for a server that serves pipelined
            transactions in order of arrival, as the emulated substation does).
        bulk: the vectorised input path (None: ``hil.store.bulk_enabled()``, the environment
            ``GRIDTWIN_BULK``); False runs the per-point reference path.
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
        max_in_flight: int = 1,
        bulk: bool | None = None,
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
        self._client: MbapClient | None = None
        #: per block: its read request PDU, built once
        self._block_pdus = [read_pdu(_READ_FC[b.table], b.address, b.count) for b in self.blocks]
        self._block_what = [
            f"read {b.table} {b.address}+{b.count} unit {b.unit}" for b in self.blocks
        ]
        #: per block: the data of its last good answer and the (name, value, quality) it gave
        self._block_last: dict[int, tuple[bytes, list[tuple[str, float, Quality]]]] = {}
        #: per block: (point name, offset in the block, registers) of its points
        self._layout: dict[int, list[tuple[str, int, int]]] = {
            id(b): [(p.name, p.modbus.address - b.address, p.modbus.count) for p in b.points]  # type: ignore[union-attr]
            for b in self.blocks
        }
        self._lock = asyncio.Lock()
        if not 1 <= int(max_in_flight) <= 64:
            raise ValueError(f"max_in_flight: expected 1..64 requests, found {max_in_flight!r}")
        self.max_in_flight = int(max_in_flight)
        self.bulk = bulk_enabled() if bulk is None else bool(bulk)
        self._init_arrays()

    def _init_arrays(self) -> None:
        """The vectorised path's state: per input (``self.inputs`` order) its value, quality
        code and timestamp, and per block how its answer maps onto them."""
        n = len(self.inputs)
        self._in_index: dict[str, int] = {p.name: i for i, p in enumerate(self.inputs)}
        self._in_names: tuple[str, ...] = tuple(p.name for p in self.inputs)
        self._v = np.full(n, math.nan)
        self._q = np.full(n, _STALE, dtype=np.uint8)  # never received: STALE, NaN, time 0
        self._t = np.zeros(n)
        self._interval = np.array([p.interval_s for p in self.inputs], dtype=float)
        regs = [p for b in self.blocks if b.table not in _BIT_TABLES for p in b.points]
        self._codec = BlockCodec(regs)
        at = {p.name: k for k, p in enumerate(regs)}
        #: per block: (positions in the arrays, bit offsets or None, a prepared decode or None)
        self._plan: list[tuple[np.ndarray, np.ndarray | None, BlockReader | None]] = []
        for b in self.blocks:
            pos = np.array([self._in_index[p.name] for p in b.points], dtype=np.intp)
            offs = [p.modbus.address - b.address for p in b.points]  # type: ignore[union-attr]
            if b.table in _BIT_TABLES:
                self._plan.append((pos, np.array(offs, dtype=np.intp), None))
                continue
            rows = np.array([at[p.name] for p in b.points], dtype=np.intp)
            self._plan.append((pos, None, self._codec.reader(offs, rows)))
        #: per block: its last good answer's data and the values and quality codes it gave
        self._block_arrays: dict[int, tuple[bytes, np.ndarray, np.ndarray]] = {}

    @property
    def polled(self) -> bool:
        return not self.poll_interval_s

    # --- connection ----------------------------------------------------------------------------
    def _new_client(self) -> MbapClient:
        self._generation += 1
        gen = self._generation

        def on_lost(exc: BaseException | None) -> None:
            # only the current client may report a loss, never one we already dropped
            if gen == self._generation and not self._closing and self.connected:
                self._lost(f"connection closed by the peer ({exc!r})" if exc else
                           "connection closed by the peer")  # fmt: skip

        return MbapClient(on_lost)

    async def _open(self) -> MbapClient:
        client = self._new_client()
        try:
            await client.connect(
                self.host, self.port, timeout=self.timeout_s + 1.0, sslctx=self._sslctx
            )
        except ssl.SSLError as exc:
            client.close()
            raise CommsLost(
                f"{self.name}: expected a Modbus/TLS server at {self.host}:{self.port} whose "
                f"certificate we trust, found the handshake failed ({exc.reason or exc}): is "
                f"the server's certificate in {self.tls.trust}? trust it with `gridtwin certs "
                f"trust SERVER.der --pki {self.tls.trust.parent}`"
            ) from exc
        except (TimeoutError, OSError) as exc:
            client.close()
            raise CommsLost(
                f"{self.name}: expected a Modbus TCP server at {self.host}:{self.port}, "
                f"found {exc!r} (connection refused or timed out)"
            ) from exc
        except BaseException:  # cancelled (close() during a reconnect): leave nothing open
            client.close()
            raise
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

    def _discard(self, client: MbapClient) -> None:
        client.close()

    # --- requests ------------------------------------------------------------------------------
    async def _call(self, what: str, unit: int, pdu: bytes) -> Response:
        """One request under the connection lock; maps transport failures to HilError."""
        async with self._lock:
            client = self._client
            if client is None or not self.connected or not client.connected:
                raise CommsLost(f"{self.name}: {what}: expected a connected link, found it down")
            self.stats["requests"] += 1
            try:
                return await client.request(unit, pdu, self.timeout_s)
            except TimeoutError as exc:
                self._note_error(exc)
                # a request without an answer leaves the stream in an unknown state: start over
                self._lost(f"{what}: no answer")
                raise HilTimeout(f"{self.name}: {what}", self.timeout_s) from exc
            except OSError as exc:  # ConnectionError, FrameError
                self._note_error(exc)
                self._lost(str(exc))
                raise CommsLost(f"{self.name}: {what}: connection lost ({exc})") from exc

    def _check_response(self, rr: Response, point: Point, what: str) -> None:
        code = rr.exception_code
        if code:
            err = ProtocolError(
                "modbus",
                code,
                f"{what} on {self.name} answered exception {code} "
                f"({_EXCEPTION_NAMES.get(code, 'unknown')})",
                point=point.name,
            )
            self._note_error(err)
            raise err

    async def _call_many(self, items: list[tuple[str, int, bytes]]) -> list[Response | Exception]:
        """Several requests pipelined under the connection lock (``max_in_flight``): each
        response, or the HilError its request ended with (the link is lost at the first)."""
        async with self._lock:
            client = self._client
            if client is None or not self.connected or not client.connected:
                what = items[0][0]
                raise CommsLost(f"{self.name}: {what}: expected a connected link, found it down")
            self.stats["requests"] += len(items)
            try:
                got = await client.request_many([(u, pdu) for _, u, pdu in items], self.timeout_s)
            except OSError as exc:  # ConnectionError: down before anything was sent
                self._note_error(exc)
                self._lost(str(exc))
                raise CommsLost(f"{self.name}: {items[0][0]}: connection lost ({exc})") from exc
        out: list[Response | Exception] = []
        failed = False
        for (what, _unit, _pdu), r in zip(items, got):
            if isinstance(r, Response):
                out.append(r)
                continue
            err: Exception
            if isinstance(r, TimeoutError):
                err = HilTimeout(f"{self.name}: {what}", self.timeout_s)
                why = f"{what}: no answer"
            else:
                err = CommsLost(f"{self.name}: {what}: connection lost ({r})")
                why = str(r)
            err.__cause__ = r
            if not failed:  # the first failure loses the link, as one request would
                failed = True
                self._note_error(r)
                self._lost(why)
            out.append(err)
        return out

    async def poll(self) -> None:
        """Read every input block now and cache the values.

        All blocks are tried; a block answered with an exception marks its points INVALID and the
        first such ProtocolError is raised at the end. A lost connection raises CommsLost at once.
        """
        first_error: ProtocolError | None = None
        not_served_error: ProtocolError | None = None  # 04/0B: a point quality, see below
        any_good = False
        blocks, k = self.blocks, self.max_in_flight
        for start in range(0, len(blocks), k):
            if k == 1 or start + 1 == len(blocks):
                answers: Any = (
                    (start, await self._call(self._block_what[start], blocks[start].unit,
                                             self._block_pdus[start])),
                )  # fmt: skip
            else:
                idx = range(start, min(start + k, len(blocks)))
                items = [(self._block_what[i], blocks[i].unit, self._block_pdus[i]) for i in idx]
                answers = zip(idx, await self._call_many(items))
            for i, rr in answers:
                if isinstance(rr, Exception):
                    raise rr
                err, not_served, ok = await self._take_answer(i, rr)
                first_error = first_error or err
                not_served_error = not_served_error or not_served
                any_good = any_good or ok
        self._notify()
        if first_error is not None:
            raise first_error
        if not_served_error is not None and not any_good:
            raise not_served_error  # nothing at all was served: the device, not one point

    async def _take_answer(
        self, i: int, rr: Response
    ) -> tuple[ProtocolError | None, ProtocolError | None, bool]:
        """Block ``i``'s answer into the inputs. Returns the protocol error it gave, the 04/0B
        error of a point read alone, and whether anything was read (as :meth:`_poll_points`)."""
        blk = self.blocks[i]
        t = self.clock()
        code = rr.exception_code
        if code in _NOT_SERVED:
            # the server does not serve a point that is not good (issue 11: 04 invalid,
            # 0B comms lost): one point failed the block; read its points one by one
            return await self._poll_points(blk)
        if code:
            try:
                self._check_response(rr, blk.points[0], self._block_what[i])
            except ProtocolError as exc:
                if self.bulk:
                    pos = self._plan[i][0]
                    self._q[pos] = INVALID  # the last value kept (NaN: none yet)
                    self._t[pos] = t
                else:
                    for p in blk.points:
                        self._store_input(
                            p.name,
                            Sample(self._old_value(p.name), Quality.INVALID, t),
                            notify=False,
                        )
                return exc, None, False
            return None, None, False  # pragma: no cover - _check_response raises for a code
        self.stats["reads"] += 1
        if self.bulk:
            self._take_block(i, blk, rr.data, t)
        else:
            self._take_block_points(blk, rr, t)
        return None, None, True

    def _take_block(self, i: int, blk: Block, data: bytes, t: float) -> None:
        """A block's good answer into the arrays: one BlockCodec pass (or one bit unpack); an
        answer with the same bytes as the block's last gives the same values, read now."""
        pos, offs, reader = self._plan[i]
        last = self._block_arrays.get(i)
        if last is not None and last[0] == data:
            vals, qs = last[1], last[2]
        else:
            if reader is None:
                raw = np.frombuffer(data, dtype=np.uint8, offset=1)
                bits = np.unpackbits(raw, bitorder="little")
                vals = bits[offs].astype(np.float64)
                qs = np.full(len(pos), GOOD, dtype=np.uint8)
            else:
                vals = reader.decode(np.frombuffer(data, dtype=">u2", count=blk.count, offset=1))
                qs = np.where(np.isfinite(vals), GOOD, INVALID).astype(np.uint8)
            self._block_arrays[i] = (data, vals, qs)
        self._v[pos] = vals
        self._q[pos] = qs
        self._t[pos] = t

    def _take_block_points(self, blk: Block, rr: Response, t: float) -> None:
        """The per-point reference of :meth:`_take_block` (``bulk=False``)."""
        cache = self._cache
        memo = self._decoded
        good = Quality.GOOD
        key = id(blk)
        data = rr.data
        last = self._block_last.get(key)
        if last is not None and last[0] == data:
            # the block's bytes did not change: the same values, read now
            for name, value, quality in last[1]:
                cache[name] = Sample(value, quality, t)
            return
        decoded: list[tuple[str, float, Quality]] = []
        if blk.table in _BIT_TABLES:
            bits = rr.bits(blk.count)
            for name, off, _n in self._layout[key]:
                decoded.append((name, 1.0 if bits[off] else 0.0, good))
        else:
            regs = rr.registers(blk.count)
            for name, off, n in self._layout[key]:
                words = regs[off : off + n]
                hit = memo.get(name)
                if hit is None or hit[0] != words:
                    value = float(decode_registers(self._by_name[name], words))
                    q = good if math.isfinite(value) else Quality.INVALID
                    hit = memo[name] = (words, value, q)
                decoded.append((name, hit[1], hit[2]))
        for name, value, quality in decoded:
            cache[name] = Sample(value, quality, t)
        self._block_last[key] = (data, decoded)

    # --- the inputs: arrays on the vectorised path ---------------------------------------------
    def _old_value(self, name: str) -> float:
        """The value last received for input ``name`` (NaN: none yet)."""
        if self.bulk:
            i = self._in_index.get(name)
            return math.nan if i is None else float(self._v[i])
        old = self._cache.get(name)
        return old.value if old is not None else math.nan

    def _store_input(self, name: str, sample: Sample, *, notify: bool = True) -> None:
        if not self.bulk:
            super()._store_input(name, sample, notify=notify)
            return
        i = self._in_index.get(name)
        if i is not None:
            self._v[i] = sample.value
            self._q[i] = QUALITY_CODE[sample.quality]
            self._t[i] = sample.timestamp
        if notify:
            self._notify()

    def input_arrays(self, now: float | None = None) -> InputArrays:
        """:meth:`read_inputs` as arrays over ``self.inputs``: values, quality codes
        (``hil.store.QUALITIES``) and timestamps, fresh copies (the same rules: GOOD values
        older than ``stale_factor * interval_s`` STALE, all COMMS_LOST while down)."""
        if not self.bulk:
            return super().input_arrays(now)
        t = self.clock() if now is None else now
        v, q, ts = self._v.copy(), self._q.copy(), self._t.copy()
        if self.connected:
            q[(q == GOOD) & (t - ts > self.stale_factor * self._interval)] = _STALE
        else:
            q[:] = COMMS_LOST
        if self.cut_points:
            cut = [self._in_index[n] for n in self.cut_points if n in self._in_index]
            q[cut] = COMMS_LOST
        return InputArrays(self._in_names, v, q, ts)

    def good_share(self, now: float | None = None) -> float:
        if not self.bulk:
            return super().good_share(now)
        q = self.input_arrays(now).quality
        return int(np.count_nonzero(q == GOOD)) / q.size if q.size else math.nan

    def read_inputs(self, now: float | None = None) -> dict[str, Sample]:
        if not self.bulk:
            return super().read_inputs(now)
        a = self.input_arrays(now)
        qs = QUALITIES
        return {
            n: Sample(v, qs[c], t)
            for n, v, c, t in zip(a.names, a.values.tolist(), a.quality.tolist(), a.stamps.tolist())
        }

    async def _poll_points(
        self, blk: Block
    ) -> tuple[ProtocolError | None, ProtocolError | None, bool]:
        """Read a block's points one at a time: 04 -> INVALID, 0B -> COMMS_LOST, else the value.

        Returns the first other protocol error, the first 04/0B error, and whether any point
        was read."""
        first_error: ProtocolError | None = None
        not_served: ProtocolError | None = None
        good = False
        fc = _READ_FC[blk.table]
        for p in blk.points:
            b = p.modbus
            assert b is not None
            what = f"read {blk.table} {b.address}+{b.count} unit {blk.unit}"
            rr = await self._call(what, blk.unit, read_pdu(fc, b.address, b.count))
            t = self.clock()
            code = rr.exception_code
            if code:
                q = Quality.COMMS_LOST if code == 0x0B else Quality.INVALID
                self._store_input(p.name, Sample(self._old_value(p.name), q, t), notify=False)
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
            if blk.table in _BIT_TABLES:
                value = 1.0 if rr.bits(1)[0] else 0.0
            else:
                value = decode_registers(p, rr.registers(b.count))
            self._store_input(p.name, Sample.good(value, t), notify=False)
        return first_error, not_served, good

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        """Read points (outputs too) one request each: reconcile after a return (issue 11)."""
        out: dict[str, Sample] = {}
        for name in names:
            p = self.point(name)
            b = p.modbus
            assert b is not None
            what = f"read back {b.table} {b.address}+{b.count} unit {b.unit}"
            rr = await self._call(what, b.unit, read_pdu(_READ_FC[b.table], b.address, b.count))
            t = self.clock()
            if rr.isError():
                out[name] = Sample(math.nan, Quality.INVALID, t)
            elif b.table in _BIT_TABLES:
                out[name] = Sample.good(1.0 if rr.bits(1)[0] else 0.0, t)
            else:
                out[name] = Sample.good(decode_registers(p, rr.registers(b.count)), t)
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
                pdu = write_coil_pdu(run[0], bool(values[0]))
            else:
                pdu = write_coils_pdu(run[0], [bool(v) for v in values])
        else:  # FC16 even for one register: float32 points span two anyway
            pdu = write_registers_pdu(run[0], [int(v) for v in values])
        rr = await self._call(what, unit, pdu)
        self._check_response(rr, first, what)
        self.stats["writes"] += 1
