"""The emulated substation's Modbus TCP server: every request reads or writes the PointStore.

pymodbus 3.16.1's own datastores keep their own copy of the registers, stay silent on an unknown
unit id and answer 04 on some faults, so this module plugs a store-backed context into
pymodbus's TCP server instead. pymodbus's request PDUs call ``context.async_getValues`` /
``async_setValues`` and turn a returned ``ExcCodes`` into an exception response; raising
``NoSuchIdException`` makes its request handler answer 0x0B. Answers, by design:

- unmapped address, a write to a point the role may not write, a write that starts or ends in
  the middle of a multi-register point -> 02 (illegal data address);
- a value out of the point's limits, NaN, or not representable -> 03 (illegal data value);
- unknown unit id -> 0x0B (gateway target device failed to respond);
- a function code pymodbus does not implement -> 01, with the request's function code.

A NaN (or the point's not-available sentinel) written by the ``plant``/``admin`` role to a
measurement or status means "not available": stored as INVALID, not refused.

A multi-point write is checked as a whole before anything is written: it changes all or nothing.
Addresses are the 0-based protocol addresses of the point map, used as is.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from hil.emulator.opcua_server import plant_not_available
from hil.errors import HilError, OutOfRange, WriteRejected
from hil.store import PointStore
from twin.pointmap import ModbusBinding, Point, decode_registers, encode_registers
from twin.quality import Quality

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


class _Slot:
    """One register (or bit) address: the point it belongs to and its word index in it."""

    __slots__ = ("point", "index")

    def __init__(self, point: Point, index: int) -> None:
        self.point = point
        self.index = index


class StoreContext(ModbusServerContext):
    """A pymodbus server context whose data is the PointStore, per unit id and table.

    Not calling ``ModbusServerContext.__init__`` on purpose: it would build pymodbus's own
    simulator datastore. ``old_simulator = True`` makes pymodbus's server use this object as is.
    """

    def __init__(self, store: PointStore, *, role: str = "operator") -> None:
        self.store = store
        self.role = role
        self.old_simulator = True
        self.simdevices = []
        self._slots: dict[tuple[int, str], dict[int, _Slot]] = {}
        for point in store.pointmap.points:
            mb = point.modbus
            if mb is None:
                continue
            table = self._slots.setdefault((mb.unit, mb.table), {})
            for i in range(mb.count):
                addr = mb.address + i
                if addr in table:
                    raise HilError(
                        f"Modbus unit {mb.unit} {mb.table} address {addr}: expected one point, "
                        f"found {table[addr].point.name!r} and {point.name!r}"
                    )
                table[addr] = _Slot(point, i)
        self._units = sorted({unit for unit, _ in self._slots})

    # pymodbus calls these -------------------------------------------------------------------
    def device_ids(self) -> list[int]:
        return list(self._units)

    def _table(self, device_id: int, func_code: int) -> dict[int, _Slot] | ExcCodes:
        if device_id not in self._units:
            raise NoSuchIdException(f"unit id {device_id} is not served; units: {self._units}")
        kind = _FC_TABLE.get(func_code)
        if kind is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return self._slots.get((device_id, kind), {})

    async def async_getValues(  # noqa: N802 - pymodbus's name
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        table = self._table(device_id, func_code)
        if isinstance(table, ExcCodes):
            return table
        out: list[int] = []
        cache: dict[str, list[int]] = {}
        for addr in range(address, address + count):
            slot = table.get(addr)
            if slot is None:
                _log.debug("read unit %d fc %d: address %d unmapped", device_id, func_code, addr)
                return ExcCodes.ILLEGAL_ADDRESS
            point = slot.point
            if point.name not in cache:
                cache[point.name] = self._encode_current(point)
            out.append(cache[point.name][slot.index])
        if func_code in (1, 2, 5, 15):
            return [bool(v) for v in out]
        return out

    async def async_setValues(  # noqa: N802 - pymodbus's name
        self,
        device_id: int,
        func_code: int,
        address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        table = self._table(device_id, func_code)
        if isinstance(table, ExcCodes):
            return table
        writes: list[tuple[Point, float]] = []
        i = 0
        n = len(values)
        while i < n:
            slot = table.get(address + i)
            if slot is None or slot.index != 0:
                _log.info(
                    "write unit %d fc %d: address %d %s",
                    device_id,
                    func_code,
                    address + i,
                    "unmapped" if slot is None else f"splits point {slot.point.name!r}",
                )
                return ExcCodes.ILLEGAL_ADDRESS
            point = slot.point
            width = _binding(point).count
            if i + width > n:
                _log.info("write unit %d: %d values split point %r", device_id, n, point.name)
                return ExcCodes.ILLEGAL_ADDRESS
            chunk = values[i : i + width]
            if func_code in (5, 15):
                value = 1.0 if chunk[0] else 0.0
            else:
                try:
                    value = decode_registers(point, [int(v) for v in chunk])
                except ValueError:  # RegisterValueError: not a value of this point
                    return ExcCodes.ILLEGAL_VALUE
            writes.append((point, value))
            i += width
        # check every point before changing any: the write is all or nothing
        for point, value in writes:
            if math.isnan(value) and plant_not_available(point, self.role):
                continue  # the plant's "not available" (NaN / sentinel): stored as INVALID
            try:
                self.store.check_write(point.name, value, role=self.role)
            except WriteRejected as exc:
                _log.info("Modbus write refused: %s", exc)
                return ExcCodes.ILLEGAL_ADDRESS
            except OutOfRange as exc:
                _log.info("Modbus write refused: %s", exc)
                return ExcCodes.ILLEGAL_VALUE
        for point, value in writes:
            if math.isnan(value):
                self.store.set(point.name, value, quality=Quality.INVALID, source="modbus")
            else:
                self.store.write(point.name, value, role=self.role, source="modbus")
        return None

    # helpers ----------------------------------------------------------------------------------
    def _encode_current(self, point: Point) -> list[int]:
        sample = self.store.get(point.name)
        mb = _binding(point)
        if mb.table in ("coil", "discrete_input") or mb.dtype == "bool":
            return [1 if sample.value else 0]
        if sample.quality is not Quality.GOOD and sample.quality is not Quality.STALE:
            return _na_registers(point)
        try:
            return encode_registers(point, sample.value)
        except ValueError:
            # a value the register cannot hold (e.g. 40000 in int16): say "not available"
            _log.warning("point %r: value %r does not fit %s", point.name, sample.value, mb.dtype)
            return _na_registers(point)


class _RequestHandler(ServerRequestHandler):
    """pymodbus's connection handler, answering an unknown function code with its own code.

    pymodbus 3.16.1 answers a request it cannot decode with function code 0x80 (its decoder
    does not pass the request's code on); a master then sees a mismatched reply. The code is
    byte 7 of a Modbus TCP frame (after the 7-byte MBAP header).
    """

    _raw_fc: int | None = None

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        self._raw_fc = data[7] if len(data) > 7 else None
        return super().callback_data(data, addr)

    def server_send(self, pdu, addr):  # noqa: ANN001 - pymodbus's signature
        if isinstance(pdu, ExceptionResponse) and pdu.function_code == 0x80 and self._raw_fc:
            pdu.function_code = (self._raw_fc & 0x7F) | 0x80
        super().server_send(pdu, addr)


class _TcpServer(ModbusTcpServer):
    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusServer:
    """Modbus TCP server over a PointStore; start/stop may be repeated on the same port."""

    def __init__(
        self, store: PointStore, *, host: str = "127.0.0.1", port: int, role: str = "operator"
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.context = StoreContext(store, role=role)
        self._server: ModbusTcpServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen on (host, port); raises OSError when the port is taken."""
        if self._server is not None:
            return
        server = _TcpServer(self.context, address=(self.host, self.port))
        if not await server.listen():
            raise OSError(f"Modbus server: could not listen on {self.host}:{self.port}")
        self._server = server
        _log.info("Modbus TCP server on %s:%d, units %s", self.host, self.port, self.context._units)

    async def stop(self) -> None:
        """Close the listener and every client connection."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()
        # let the transports' close callbacks run so no task outlives the server
        await asyncio.sleep(0)
