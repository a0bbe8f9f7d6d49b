"""The emulated substation's Modbus TCP server: every request reads or writes the PointStore.

The transport is our own asyncio server (MBAP framing, connection hygiene, peer addresses);
pymodbus 3.16.1 only decodes the PDUs and runs them against a store-backed context. pymodbus's
own server stays silent after garbage or a lying MBAP length, answers FC17 with its name and
FC24 with made-up FIFO data, has no connection cap and no idle timeout (FIELD-NOTES), so it is
not used. Answers, by design:

Reads (a Modbus register has no quality, so a point whose store quality is not GOOD is never
served as a valid value):

- GOOD -> the value;
- not GOOD and the point map names a not-available sentinel (``modbus.na``) -> the sentinel;
- else COMMS_LOST or STALE -> 0x0B (gateway target device failed to respond), INVALID (NaN,
  never set, "not available") -> 0x04 (server device failure). A read spanning several points
  fails as a whole when one of them is not served.

Writes:

- server in read-only mode, or the client's address not on the write allow-list -> 01 (illegal
  function: this client may not use write function codes);
- unmapped address, a write to a point the role may not write, a write that starts or ends in
  the middle of a multi-register point -> 02 (illegal data address);
- a value out of the point's limits, NaN, or not representable -> 03 (illegal data value);
  a count out of the protocol's limits (read 1..125 registers / 1..2000 bits, write 1..123
  registers / 1..1968 coils) or a byte count that does not match it -> 03;
- unknown unit id -> 0x0B;
- a function code we do not implement (FC7, 8, 11, 12, 17, 20, 21, 24, 43, ...) -> 01, with the
  request's function code. No FC17 identity, no FC24 FIFO data.

A NaN (or the point's not-available sentinel) written by the ``plant``/``admin`` role to a
measurement or status means "not available": stored as INVALID, not refused. A multi-point
write is checked as a whole before anything is written: it changes all or nothing. Every write
attempt, accepted or refused, goes to the store's audit log (:mod:`hil.security.audit`) with
the peer address.

Connection hygiene (:class:`ModbusPolicy`): a malformed frame (protocol id not 0, an MBAP length
outside 2..254, a PDU whose length does not match its function code, a frame not completed
within ``frame_timeout_s``) closes that connection, logged and counted in ``stats``; at most
``max_connections`` at once, a new connection beyond that drops the connection idle the longest;
a connection idle for ``idle_timeout_s`` is closed. Requests on one connection are answered in
order. Addresses are the 0-based protocol addresses of the point map, used as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from hil.errors import HilError, OutOfRange, WriteRejected
from hil.security.audit import ACCEPTED, REFUSED, AuditLog, audit_log
from hil.security.users import plant_not_available
from hil.store import GOOD as _Q_GOOD
from hil.store import INVALID as _Q_INVALID
from hil.store import PointStore
from twin.pointmap import BLOCK_WIDTH, BlockCodec, ModbusBinding, Point, encode_registers
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

# Function code -> Modbus table the request addresses.
_FC_TABLE: dict[int, str] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete_input",
    3: "holding_register",
    6: "holding_register",
    16: "holding_register",
    22: "holding_register",
    23: "holding_register",
    4: "input_register",
}
#: The function codes served; any other answers 01.
IMPLEMENTED = frozenset(_FC_TABLE)
WRITE_CODES = frozenset({5, 6, 15, 16, 22, 23})
#: reads answered straight from the register image (no pymodbus PDU objects)
_READ_CODES = frozenset({1, 2, 3, 4})
#: MBAP length field (unit id + PDU): a Modbus TCP ADU is at most 260 bytes.
_MAX_LENGTH = 254
_GATEWAY_NO_RESPONSE = 0x0B
_DEVICE_FAILURE = 0x04

#: Default write allow-list: loopback clients only.
LOOPBACK = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class ModbusPolicy:
    """Who may write and how connections are kept.

    Args:
        read_only: refuse every write function code (01).
        allow: networks/addresses whose clients may write (e.g. ``("127.0.0.1",
            "10.0.0.0/24")``); None: any client. Default: loopback only.
        max_connections: connections at once; one more drops the one idle the longest.
        idle_timeout_s: a connection with no request for this long is closed.
        frame_timeout_s: a frame must be complete this long after its first byte.
        tls: Modbus/TCP Security (:class:`hil.security.modbus_tls.ModbusTls`): every
            connection must complete a mutual TLS handshake with a trusted client certificate
            (else it is closed and audited); the client's role comes from its certificate.
            None: plain Modbus TCP.
    """

    read_only: bool = False
    allow: tuple[str, ...] | None = LOOPBACK
    max_connections: int = 32
    idle_timeout_s: float = 120.0
    frame_timeout_s: float = 5.0
    tls: Any = None

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise HilError(f"Modbus: max_connections: expected >= 1, found {self.max_connections}")
        for name in ("idle_timeout_s", "frame_timeout_s"):
            v = getattr(self, name)
            if not (v > 0):
                raise HilError(f"Modbus: {name}: expected a positive number, found {v!r}")
        self.networks()  # validate early

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        if self.allow is None:
            return None
        out = []
        for entry in self.allow:
            try:
                out.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise HilError(
                    f"Modbus write allow-list: expected an IP address or network "
                    f"(127.0.0.1, 10.0.0.0/24), found {entry!r}"
                ) from None
        return tuple(out)


def _binding(point: Point) -> ModbusBinding:
    if point.modbus is None:
        raise ValueError(f"point {point.name!r} has no Modbus binding")
    return point.modbus


def _na_registers(point: Point) -> list[int]:
    """Registers that say "not available": the sentinel, NaN for floats, else zeros."""
    try:
        return encode_registers(point, math.nan)
    except ValueError:  # an integer without a sentinel has no way to say it
        return [0] * _binding(point).count


class _NotServed(Exception):
    """A point whose quality is not GOOD and whose map names no sentinel: an exception code."""

    def __init__(self, code: int, point: Point, quality: Quality) -> None:
        super().__init__(code)
        self.code = code
        self.point = point
        self.quality = quality


class _Slot:
    """One register (or bit) address: the point it belongs to and its word index in it."""

    __slots__ = ("point", "index")

    def __init__(self, point: Point, index: int) -> None:
        self.point = point
        self.index = index


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: for the audit and the allow-list."""

    peer: str = ""
    may_write: bool = True
    why_not: str = ""
    #: Modbus/TLS: the client certificate (audit label) and the role it carries (None: the
    #: server's role; plain Modbus has no authentication)
    user: str = ""
    role: str | None = None


def _check_overlaps(unit: int, table: str, points: list[Point]) -> None:
    """Raise when two points of one table share an address (the first such, in map order)."""
    bindings = [_binding(p) for p in points]
    cnt = np.array([b.count for b in bindings], dtype=np.intp)
    addr = np.repeat(np.array([b.address for b in bindings], dtype=np.intp), cnt)
    addr += np.arange(addr.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    if np.unique(addr).size == addr.size:
        return
    seen: dict[int, Point] = {}
    for point, b in zip(points, bindings):
        for a in range(b.address, b.address + b.count):
            if a in seen:
                raise HilError(
                    f"Modbus unit {unit} {table} address {a}: expected one point, "
                    f"found {seen[a].name!r} and {point.name!r}"
                )
            seen[a] = point


class _Table:
    """One (unit, Modbus table) served: its points, their codec and the register image.

    The image holds every mapped address's served word. A point's words are encoded again
    only when the store's version of the point differs from the one last encoded (a read
    after a step re-encodes the points that step changed, as arrays per data type).
    """

    def __init__(self, store: PointStore, points: list[Point], func_bits: bool) -> None:
        self.points = tuple(sorted(points, key=lambda p: _binding(p).address))
        bindings = [_binding(p) for p in self.points]
        n = len(self.points)
        self.codec = BlockCodec(self.points)
        #: store rows of the points
        self.pos = store.positions([p.name for p in self.points])
        addr = np.array([b.address for b in bindings], dtype=np.intp)
        cnt = np.array([b.count for b in bindings], dtype=np.intp)
        self.base = int(addr.min())
        rel = addr - self.base
        size = int((rel + cnt).max())
        #: address - base -> local point index (-1: unmapped)
        self.owner = np.full(size, -1, dtype=np.intp)
        starts = np.repeat(rel, cnt)
        within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        self.owner[starts + within] = np.repeat(np.arange(n), cnt)
        self.image = np.zeros(size, dtype=np.uint16)
        cols = np.arange(BLOCK_WIDTH)
        #: per point: the image index of each of its words (``used``: the point has it)
        self.used = cols[None, :] < cnt[:, None]
        self.slots = np.where(self.used, rel[:, None] + cols[None, :], 0)
        #: served as one bit (a coil / discrete input, or a bool): 1 when the value is not 0
        self.bit = np.array(
            [func_bits or b.table in ("coil", "discrete_input") or b.dtype == "bool"
             for b in bindings], dtype=bool,
        )  # fmt: skip
        self.has_na = np.array([b.na_sentinel is not None for b in bindings], dtype=bool)
        self.na_words = np.zeros((n, BLOCK_WIDTH), dtype=np.uint16)
        for k, p in enumerate(self.points):
            if self.has_na[k]:
                w = _na_registers(p)
                self.na_words[k, : len(w)] = w
        #: 0: served; else the exception code a read of the point answers
        self.code = np.zeros(n, dtype=np.uint8)
        #: store version last encoded per point (the max: never)
        self.seen = np.full(n, np.iinfo(np.uint64).max, dtype=np.uint64)

    def refresh(self, store: PointStore, local: np.ndarray) -> None:
        """Encode again the points ``local`` whose store version moved on."""
        ver = store.versions[self.pos[local]]
        stale = ver != self.seen[local]
        if not stale.any():
            return
        li = local[stale]
        rows = self.pos[li]
        v = store.values[rows]
        q = store.qualities[rows]
        m = li.size
        words = np.zeros((m, BLOCK_WIDTH), dtype=np.uint16)
        code = np.zeros(m, dtype=np.uint8)
        good = q == _Q_GOOD
        bit = self.bit[li]
        b = good & bit
        if b.any():
            words[b, 0] = v[b] != 0.0
        r = good & ~bit
        if r.any():
            w, fits = self.codec.encode(v[r], li[r])
            words[r] = w
            if not fits.all():
                # a value the register cannot hold (e.g. 40000 in int16): not a valid value
                for k in np.flatnonzero(r)[~fits].tolist():
                    p = self.points[int(li[k])]
                    _log.warning("point %r: value %r does not fit %s", p.name, float(v[k]),
                                 _binding(p).dtype)  # fmt: skip
                bad = np.flatnonzero(r)[~fits]
                good[bad] = False  # served like a point that is not GOOD ...
                q = q.copy()
                q[bad] = _Q_INVALID  # ... and INVALID: the sentinel, else 04
        na = ~good
        if na.any():
            has = self.has_na[li]
            words[na & has] = self.na_words[li[na & has]]
            lost = na & ~has
            code[lost] = np.where(q[lost] == _Q_INVALID, _DEVICE_FAILURE, _GATEWAY_NO_RESPONSE)
        used = self.used[li]
        self.image[self.slots[li][used]] = words[used]
        self.code[li] = code
        self.seen[li] = ver[stale]


class StoreContext:
    """The data of the Modbus server: the PointStore, per unit id and table.

    pymodbus's request PDUs call ``async_getValues`` / ``async_setValues`` on what they are
    given; :meth:`view` binds the caller (peer address) so writes are audited with it.
    """

    def __init__(
        self, store: PointStore, *, role: str = "operator", audit: AuditLog | None = None
    ) -> None:
        self.store = store
        self.role = role
        self.audit = audit if audit is not None else audit_log(store)
        #: read request shape -> (table, first, last image index, its points) (:meth:`_plan`)
        self._plans: dict[
            tuple[int, int, int, int], tuple[_Table, int, int, np.ndarray] | ExcCodes
        ] = {}
        by_table: dict[tuple[int, str], list[Point]] = {}
        for point in store.pointmap.points:
            mb = point.modbus
            if mb is not None:
                by_table.setdefault((mb.unit, mb.table), []).append(point)
        for (unit, table), pts in by_table.items():
            _check_overlaps(unit, table, pts)
        #: (unit, table) -> the served image of its points
        self._tables: dict[tuple[int, str], _Table] = {
            key: _Table(store, pts, key[1] in ("coil", "discrete_input"))
            for key, pts in by_table.items()
        }
        self.units = sorted({unit for unit, _ in self._tables})
        #: False: reads encode point by point (the reference; ``GRIDTWIN_BULK=0``)
        self.block: bool = bool(getattr(store, "bulk", True))
        #: the per-point reference's memo: point -> (the sample last encoded, its words)
        self._encoded: dict[str, tuple[Sample, list[int]]] = {}

    def device_ids(self) -> list[int]:
        return list(self.units)

    def view(self, caller: Caller) -> _CallerView:
        return _CallerView(self, caller)

    def _slot(self, device_id: int, func_code: int, address: int) -> _Slot | None:
        """The point at ``address`` and the index of that word in it (None: unmapped)."""
        t = self._tables.get((device_id, _FC_TABLE[func_code]))
        if t is None:
            return None
        a = address - t.base
        if not 0 <= a < t.owner.size or t.owner[a] < 0:
            return None
        k = int(t.owner[a])
        return _Slot(t.points[k], a - int(t.slots[k, 0]))

    async def async_getValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        if not self.block:
            plan = self._plan_of(device_id, func_code, address, count)
            if isinstance(plan, ExcCodes):
                return plan
            return self._read_per_point(device_id, func_code, *plan)
        words = self.read_words(device_id, func_code, address, count)
        if isinstance(words, ExcCodes):
            return words
        if func_code in (1, 2, 5, 15):
            return (words != 0).tolist()
        return words.tolist()

    def _plan_of(
        self, device_id: int, func_code: int, address: int, count: int
    ) -> tuple[_Table, int, int, np.ndarray] | ExcCodes:
        key = (device_id, func_code, address, count)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(*key)
            if len(self._plans) < 4096:  # bounded: a client sweeping addresses grows nothing
                self._plans[key] = plan
        return plan

    def read_words(
        self, device_id: int, func_code: int, address: int, count: int
    ) -> np.ndarray | ExcCodes:
        """The words (bits: 0/1) a read answers, as a uint16 array, or its exception code.

        Points changed in the store since the last read are encoded again first (as blocks
        per data type); a point not served (not GOOD without a sentinel, a value that does not
        fit) answers its code (the first such point of the read).
        """
        plan = self._plan_of(device_id, func_code, address, count)
        if isinstance(plan, ExcCodes):
            return plan
        table, a, b, local = plan
        table.refresh(self.store, local)
        codes = table.code[local]
        if codes.any():
            k = int(np.argmax(codes != 0))
            point = table.points[int(local[k])]
            _log.debug("read unit %d: point %r is %s", device_id, point.name,
                       self.store.get(point.name).quality)  # fmt: skip
            return ExcCodes(int(codes[k]))
        return table.image[a:b]

    def _read_per_point(
        self, device_id: int, func_code: int, table: _Table, a: int, b: int, local: np.ndarray
    ) -> list[int] | list[bool] | ExcCodes:
        """The reference of the block read: each point encoded on its own from its Sample
        (kept while the store hands out the same Sample), as the server did before."""
        words: dict[int, list[int]] = {}
        memo = self._encoded
        for k in local.tolist():
            point = table.points[k]
            sample = self.store.get(point.name)
            hit = memo.get(point.name)
            if hit is not None and hit[0] is sample:
                words[k] = hit[1]
                continue
            try:
                enc = self._encode_sample(point, sample)
            except _NotServed as ns:
                _log.debug("read unit %d: point %r is %s", device_id, point.name, ns.quality)
                return ExcCodes(ns.code)
            memo[point.name] = (sample, enc)
            words[k] = enc
        out = []
        for addr in range(a, b):
            k = int(table.owner[addr])
            out.append(words[k][addr - int(table.slots[k, 0])])
        if func_code in (1, 2, 5, 15):
            return [bool(v) for v in out]
        return out

    def _plan(
        self, device_id: int, func_code: int, address: int, count: int
    ) -> tuple[_Table, int, int, np.ndarray] | ExcCodes:
        """The image slice a read answers from and its points in address order;
        ILLEGAL_ADDRESS when an address is unmapped. Fixed per request shape: cached."""
        table = self._tables.get((device_id, _FC_TABLE[func_code]))
        if table is None:
            _log.debug("read unit %d fc %d: address %d unmapped", device_id, func_code, address)
            return ExcCodes.ILLEGAL_ADDRESS
        a = address - table.base
        b = a + count
        size = table.owner.size
        owners = table.owner[max(a, 0) : max(min(b, size), 0)]
        if a < 0 or b > size or (owners < 0).any():
            bad = next(
                addr
                for addr in range(address, address + count)
                if not (0 <= addr - table.base < size) or table.owner[addr - table.base] < 0
            )
            _log.debug("read unit %d fc %d: address %d unmapped", device_id, func_code, bad)
            return ExcCodes.ILLEGAL_ADDRESS
        # owners are sorted (points in address order): the distinct ones, in order
        keep = np.ones(owners.size, dtype=bool)
        keep[1:] = owners[1:] != owners[:-1]
        return table, a, b, owners[keep]

    async def async_setValues(  # noqa: N802 - pymodbus's name
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
        caller: Caller = Caller(),
    ) -> ExcCodes | None:
        role, user = caller.role or self.role, caller.user
        where = f"unit {device_id} {_FC_TABLE[func_code]} {address}"
        store = self.store

        def refuse(point: str, new: float | None, reason: str, code: ExcCodes) -> ExcCodes:
            old = store.value(point) if point in store else None
            self.audit.record(protocol="modbus", peer=caller.peer, user=user, point=point,
                              old=old, new=new, result=REFUSED, reason=reason,
                              role=role)  # fmt: skip
            return code

        if not caller.may_write:
            return refuse(where, None, caller.why_not, ExcCodes.ILLEGAL_FUNCTION)
        # the points the request covers, in order; the first address problem (if any) is
        # answered after a decoding problem of a point before it, as a point-by-point walk does
        points: list[Point] = []
        chunks: list[Sequence[int] | Sequence[bool]] = []
        walk_error: tuple[str, str] | None = None
        i = 0
        n = len(values)
        while i < n:
            slot = self._slot(device_id, func_code, address + i)
            if slot is None or slot.index != 0:
                why = "unmapped" if slot is None else f"splits point {slot.point.name!r}"
                walk_error = (f"unit {device_id} {_FC_TABLE[func_code]} {address + i}",
                              f"address {why}")  # fmt: skip
                break
            point = slot.point
            width = _binding(point).count
            if i + width > n:
                walk_error = (point.name, f"{n} values split point")
                break
            points.append(point)
            chunks.append(values[i : i + width])
            i += width
        if func_code in (5, 15):
            decoded = [1.0 if c[0] else 0.0 for c in chunks]
        else:
            try:
                decoded = self._decode(device_id, func_code, points, chunks)
            except ValueError as exc:  # RegisterValueError: not a value of this point
                name = getattr(exc, "point", None) or points[0].name
                return refuse(name, None, str(exc), ExcCodes.ILLEGAL_VALUE)
        if walk_error is not None:
            return refuse(walk_error[0], None, walk_error[1], ExcCodes.ILLEGAL_ADDRESS)
        writes = list(zip(points, decoded))
        # check every point before changing any: the write is all or nothing
        for point, value in writes:
            if math.isnan(value) and plant_not_available(point, role):
                continue  # the plant's "not available" (NaN / sentinel): stored as INVALID
            try:
                store.check_write(point.name, value, role=role)
            except WriteRejected as exc:
                return refuse(point.name, value, str(exc), ExcCodes.ILLEGAL_ADDRESS)
            except OutOfRange as exc:
                return refuse(point.name, value, str(exc), ExcCodes.ILLEGAL_VALUE)
        if not writes:
            return None
        olds = [store.value(p.name) for p in points]
        vals = np.array(decoded, dtype=np.float64)
        nan = np.isnan(vals)
        store.set_array(
            store.positions([p.name for p in points]),
            vals,
            quality=np.where(nan, _Q_INVALID, _Q_GOOD).astype(np.uint8),
            source="modbus",
        )
        for (point, value), old, na in zip(writes, olds, nan.tolist()):
            self.audit.record(protocol="modbus", peer=caller.peer, user=user, point=point.name,
                              old=old, new=value, result=ACCEPTED,
                              reason="not available" if na else "",
                              role=role)  # fmt: skip
        return None

    def _decode(
        self,
        device_id: int,
        func_code: int,
        points: list[Point],
        chunks: list[Sequence[int] | Sequence[bool]],
    ) -> list[float]:
        """The values of a register write, decoded as one block.

        Raises:
            RegisterValueError: registers that are not a value of a point (the first one).
        """
        if not points:
            return []
        table = self._tables[(device_id, _FC_TABLE[func_code])]
        local = np.searchsorted(
            [_binding(p).address for p in table.points], [_binding(p).address for p in points]
        )
        rows = np.zeros((len(points), BLOCK_WIDTH), dtype=np.int64)
        for k, c in enumerate(chunks):
            rows[k, : len(c)] = [int(v) for v in c]
        return table.codec.decode(rows, local).tolist()

    def _encode_current(self, point: Point) -> list[int]:
        return self._encode_sample(point, self.store.get(point.name))

    def _encode_sample(self, point: Point, sample: Sample) -> list[int]:
        """The words served for ``point`` holding ``sample`` (a pure function of the two; the
        per-point reference of :class:`_Table`'s block encoding).

        Raises:
            _NotServed: not GOOD and no sentinel, or a value the registers cannot hold.
        """
        mb = _binding(point)
        if sample.quality is not Quality.GOOD:
            if mb.na_sentinel is not None:
                return _na_registers(point)
            code = _DEVICE_FAILURE if sample.quality is Quality.INVALID else _GATEWAY_NO_RESPONSE
            raise _NotServed(code, point, sample.quality)
        if mb.table in ("coil", "discrete_input") or mb.dtype == "bool":
            return [1 if sample.value else 0]
        try:
            return encode_registers(point, sample.value)
        except ValueError:
            # a value the register cannot hold (e.g. 40000 in int16): not a valid value
            _log.warning("point %r: value %r does not fit %s", point.name, sample.value, mb.dtype)
            if mb.na_sentinel is not None:
                return _na_registers(point)
            raise _NotServed(_DEVICE_FAILURE, point, Quality.INVALID) from None


class _CallerView:
    """The context as one caller sees it (what pymodbus's PDUs are given)."""

    def __init__(self, ctx: StoreContext, caller: Caller) -> None:
        self._ctx = ctx
        self._caller = caller

    async def async_getValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return await self._ctx.async_getValues(device_id, func_code, address, count)

    async def async_setValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, values: Sequence[Any]
    ) -> ExcCodes | None:
        return await self._ctx.async_setValues(
            device_id, func_code, address, values, caller=self._caller
        )


class _Malformed(Exception):
    """A frame that cannot be a Modbus TCP request: the connection is closed."""


def _pdu_length_ok(fc: int, pdu: bytes) -> bool:
    """Whether the PDU length matches what its function code says (MBAP length honest)."""
    n = len(pdu)
    if fc in (1, 2, 3, 4, 5, 6):
        return n == 5
    if fc in (15, 16):
        return n >= 6 and n == 6 + pdu[5]
    if fc == 22:
        return n == 7
    if fc == 23:
        return n >= 10 and n == 10 + pdu[9]
    return True  # not implemented: answered 01 whatever follows


def _count_error(fc: int, pdu: bytes) -> str | None:
    """Why a request's count / byte count is outside the protocol's limits (None: fine)."""

    def u16(i: int) -> int:
        return int.from_bytes(pdu[i : i + 2], "big")

    if fc in (1, 2) and not 1 <= u16(3) <= 2000:
        return f"read of {u16(3)} bits (1..2000)"
    if fc in (3, 4) and not 1 <= u16(3) <= 125:
        return f"read of {u16(3)} registers (1..125)"
    if fc == 5 and u16(3) not in (0x0000, 0xFF00):
        return f"coil value 0x{u16(3):04X} (0x0000 or 0xFF00)"
    if fc == 15 and (not 1 <= u16(3) <= 1968 or pdu[5] != (u16(3) + 7) // 8):
        return f"write of {u16(3)} coils in {pdu[5]} bytes (1..1968)"
    if fc == 16 and (not 1 <= u16(3) <= 123 or pdu[5] != 2 * u16(3)):
        return f"write of {u16(3)} registers in {pdu[5]} bytes (1..123)"
    if fc == 23 and (not 1 <= u16(3) <= 125 or not 1 <= u16(7) <= 121 or pdu[9] != 2 * u16(7)):
        return f"read {u16(3)} / write {u16(7)} registers in {pdu[9]} bytes"
    return None


class _Connection:
    __slots__ = ("peer", "ip", "writer", "task", "last", "busy")

    def __init__(self, peer: str, ip: str, writer: asyncio.StreamWriter, now: float) -> None:
        self.peer = peer
        self.ip = ip
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self.last = now
        self.busy = False


class ModbusServer:
    """Modbus TCP server over a PointStore; start/stop may be repeated on the same port.

    Args:
        store: the point store served.
        host, port: bind address (loopback by default).
        role: the role writes act with (Modbus has no authentication).
        policy: read-only mode, write allow-list, connection limits (:class:`ModbusPolicy`).
        audit: the audit log (default: the store's, :func:`hil.security.audit.audit_log`).

    ``stats`` counts connections, requests and what was refused or closed and why.
    """

    def __init__(
        self,
        store: PointStore,
        *,
        host: str = "127.0.0.1",
        port: int,
        role: str = "operator",
        policy: ModbusPolicy | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.policy = policy or ModbusPolicy()
        self._networks = self.policy.networks()
        self.context = StoreContext(store, role=role, audit=audit)
        self._decoder = DecodePDU(True)
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _Connection] = {}
        self._tls_ctx: Any = None
        self._tls_stamp: tuple[Any, ...] = ()
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "connections",
                "requests",
                "exceptions",
                "malformed_closed",
                "idle_closed",
                "cap_dropped",
                "writes_refused_policy",
                "not_implemented",
            ),
            0,
        )

    @property
    def audit(self) -> AuditLog:
        return self.context.audit

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    async def start(self) -> None:
        """Listen on (host, port); raises OSError when the port is taken."""
        if self._server is not None:
            return
        tls = self.policy.tls
        self._tls_ctx = tls.server_context() if tls is not None else None
        self._tls_stamp = tls.stamp() if tls is not None else ()
        if self._tls_ctx is None:
            self._server = await asyncio.start_server(self._accept, self.host, self.port)
        else:
            loop = asyncio.get_running_loop()

            def paused() -> asyncio.StreamReaderProtocol:
                return _PausedProtocol(asyncio.StreamReader(loop=loop), self._accept, loop=loop)

            self._server = await loop.create_server(paused, self.host, self.port)
        if self.port == 0:  # a free port was asked for: keep it for restarts
            self.port = int(self._server.sockets[0].getsockname()[1])
        _log.info(
            "Modbus TCP server on %s:%d, units %s%s, writes from %s",
            self.host,
            self.port,
            self.context.units,
            " (read-only)" if self.policy.read_only else "",
            "anyone" if self.policy.allow is None else ", ".join(self.policy.allow),
        )

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        conns = list(self._conns.values())
        for c in conns:
            c.writer.close()
            if c.task is not None:
                c.task.cancel()
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._conns.clear()
        await server.wait_closed()

    # connections ------------------------------------------------------------------------------
    def _may_write(self, ip: str) -> tuple[bool, str]:
        if self.policy.read_only:
            return False, "server is read-only"
        nets = self._networks
        if nets is None:
            return True, ""
        try:
            addr = ipaddress.ip_address(ip.split("%")[0])
        except ValueError:
            return False, f"peer {ip!r} is not an IP address"
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if any(addr in n for n in nets):
            return True, ""
        return False, f"peer {ip} is not on the write allow-list"

    def _make_room(self) -> None:
        """At the cap: drop the connection idle the longest (busy ones last)."""
        while len(self._conns) >= self.policy.max_connections:
            victim = min(self._conns.values(), key=lambda c: (c.busy, c.last))
            _log.warning("Modbus: %d connections (cap), dropping %s", len(self._conns), victim.peer)
            self.stats["cap_dropped"] += 1
            self._conns.pop(id(victim), None)
            victim.writer.close()
            if victim.task is not None:
                victim.task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        peername = writer.get_extra_info("peername") or ("", 0)
        ip = str(peername[0])
        peer = f"[{ip}]:{peername[1]}" if ":" in ip else f"{ip}:{peername[1]}"
        self._make_room()
        conn = _Connection(peer, ip, writer, loop.time())
        conn.task = asyncio.current_task()
        self._conns[id(conn)] = conn
        self.stats["connections"] += 1
        may, why = self._may_write(ip)
        caller = Caller(peer=peer, may_write=may, why_not=why)
        try:
            if self._tls_ctx is not None:
                authenticated = await self._handshake(caller, writer)
                if authenticated is None:
                    return
                caller = authenticated
            view = self.context.view(caller)
            await self._serve(conn, reader, writer, view)
        except _Malformed as exc:
            self.stats["malformed_closed"] += 1
            _log.warning("Modbus: malformed frame from %s (%s): connection closed", peer, exc)
        except TimeoutError:
            self.stats["idle_closed"] += 1
            _log.info("Modbus: %s idle for %g s: connection closed", peer,
                      self.policy.idle_timeout_s)  # fmt: skip
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # dropped (cap) or server stopping
        finally:
            self._conns.pop(id(conn), None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _handshake(self, caller: Caller, writer: asyncio.StreamWriter) -> Caller | None:
        """Modbus/TLS: the mutual handshake on an accepted connection; the caller with the
        certificate's role, or None (refused, audited: no or an untrusted certificate)."""
        import dataclasses
        import ssl

        tls = self.policy.tls
        stamp = tls.stamp()
        if stamp != self._tls_stamp:  # `gridtwin certs trust` while serving
            try:
                self._tls_ctx, self._tls_stamp = tls.server_context(), stamp
            except Exception as exc:  # noqa: BLE001 - keep the last good trust list
                _log.warning("Modbus/TLS: trust list not reloaded: %s", exc)
        try:
            await asyncio.wait_for(writer.start_tls(self._tls_ctx), self.policy.frame_timeout_s)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            self.stats["tls_refused"] = self.stats.get("tls_refused", 0) + 1
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.audit.record(protocol="modbus", peer=caller.peer, user="",
                              point="(connection)", old=None, new=None, result=REFUSED,
                              reason=f"TLS handshake refused: {reason}",
                              role="")  # fmt: skip
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        role, label = tls.role_of(der)
        may, why = caller.may_write, caller.why_not
        if may and role == "viewer":
            may, why = False, f"certificate {label} has role viewer: read only"
        _log.info("Modbus/TLS: %s is %s (role %s)", caller.peer, label, role)
        return dataclasses.replace(caller, user=label, role=role, may_write=may, why_not=why)

    async def _serve(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        view: _CallerView,
    ) -> None:
        loop = asyncio.get_running_loop()
        policy = self.policy
        while True:
            first = await asyncio.wait_for(reader.readexactly(1), policy.idle_timeout_s)
            conn.busy = True
            try:
                async with asyncio.timeout(policy.frame_timeout_s):
                    head = first + await reader.readexactly(6)
                    if head[2:4] != b"\x00\x00":
                        raise _Malformed(f"protocol id 0x{head[2]:02X}{head[3]:02X}, expected 0")
                    length = int.from_bytes(head[4:6], "big")
                    if not 2 <= length <= _MAX_LENGTH:
                        raise _Malformed(f"MBAP length {length}, expected 2..{_MAX_LENGTH}")
                    pdu = await reader.readexactly(length - 1)
            except TimeoutError:
                why = f"frame not complete within {policy.frame_timeout_s:g} s"
                raise _Malformed(why) from None
            tid, unit = head[0:2], head[6]
            answer = await self._answer(unit, pdu, view)
            writer.write(tid + b"\x00\x00" + (len(answer) + 1).to_bytes(2, "big") +
                         bytes([unit]) + answer)  # fmt: skip
            await writer.drain()
            conn.last = loop.time()
            conn.busy = False

    async def _answer(self, unit: int, pdu: bytes, view: _CallerView) -> bytes:
        """The response PDU for one request PDU (raises _Malformed for a dishonest frame)."""
        self.stats["requests"] += 1
        fc = pdu[0]

        def exc(code: int) -> bytes:
            self.stats["exceptions"] += 1
            return bytes([(fc & 0x7F) | 0x80, code])

        if fc not in IMPLEMENTED:
            self.stats["not_implemented"] += 1
            _log.info("Modbus: function code %d not implemented: 01", fc)
            return exc(0x01)
        if not _pdu_length_ok(fc, pdu):
            raise _Malformed(f"function code {fc} with a {len(pdu)}-byte PDU")
        if unit not in self.context.units:
            _log.info("Modbus: unit id %d not served (units %s): 0B", unit, self.context.units)
            if fc in WRITE_CODES:
                self.audit.record(
                    protocol="modbus",
                    peer=view._caller.peer,
                    user="",
                    point=f"unit {unit}",
                    old=None,
                    new=None,
                    result=REFUSED,
                    reason=f"unit id {unit} not served",
                    role=self.context.role,
                )
            return exc(_GATEWAY_NO_RESPONSE)
        if (why := _count_error(fc, pdu)) is not None:
            _log.info("Modbus: %s: 03", why)
            return exc(0x03)
        if fc in WRITE_CODES and not view._caller.may_write:
            self.stats["writes_refused_policy"] += 1
        if fc in _READ_CODES and self.context.block:
            # a read answered from the register image: no PDU objects, one byte string
            address, count = int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
            words = self.context.read_words(unit, fc, address, count)
            if isinstance(words, ExcCodes):
                return exc(int(words))
            if fc in (3, 4):
                return bytes([fc, 2 * count]) + words.astype(">u2").tobytes()
            packed = np.packbits(words != 0, bitorder="little").tobytes()
            return bytes([fc, len(packed)]) + packed
        request: ModbusPDU | None = self._decoder.decode(pdu)
        if request is None:
            raise _Malformed(f"function code {fc}: PDU does not decode")
        response = await request.datastore_update(view, unit)  # type: ignore[arg-type]
        if isinstance(response, ExceptionResponse):
            self.stats["exceptions"] += 1
        return bytes([response.function_code]) + response.encode()


class _PausedProtocol(asyncio.StreamReaderProtocol):
    """Modbus/TLS: a connection reads nothing until the TLS handshake takes it over (a
    ClientHello read into the plain stream would be lost to the handshake)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)


def parse_allow(entries: Iterable[str]) -> tuple[str, ...]:
    """``--modbus-allow`` values (comma-separated too), validated."""
    out: list[str] = []
    for e in entries:
        out.extend(x.strip() for x in e.split(",") if x.strip())
    ModbusPolicy(allow=tuple(out))  # raises HilError naming a bad entry
    return tuple(out)
