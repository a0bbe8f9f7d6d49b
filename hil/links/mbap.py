"""A minimal asyncio Modbus TCP client for the field link's hot path (reads and writes).

Why not pymodbus's client: each request through its transaction manager costs more than our
whole poll of a block (tasks, futures, PDU objects, frame decoding), and it does not pair a
response with its request by transaction id (FIELD-NOTES). This client sends ready-made
request PDUs and hands back the response PDU's bytes:

- MBAP framing: transaction id (incremented per request, 1..65535), protocol id 0, length,
  unit id. One request, or one batch of pipelined requests (:meth:`MbapClient.request_many`),
  in flight per connection (the caller serialises); a response is paired with its request by
  transaction id, and one whose transaction id or unit id is no pending request's is dropped
  (a late answer of a request that timed out is never taken for the next one's).
- Exception responses (``0x80 | fc``, code) come back as :class:`Response` with
  ``exception_code`` set; the caller names device, register and code.
- A frame that is not Modbus TCP (protocol id not 0, a length outside 2..254) closes the
  connection: the stream cannot be trusted afterwards.
- Timeouts per request; no reconnection here (the link's supervisor reconnects on a fresh
  client). Modbus/TLS is the same protocol over an ``ssl.SSLContext`` connection.

pymodbus stays the server in tests and the emulator's PDU decoder.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable, Iterable, Sequence

_HEAD = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_READ = struct.Struct(">BHH")  # function code, start address, count / value
MAX_LENGTH = 254  # MBAP length: unit id + a PDU of at most 253 bytes

#: bits of one byte, least significant first (a coil/discrete-input response byte)
_BITS = tuple(tuple(bool(b >> i & 1) for i in range(8)) for b in range(256))


class FrameError(ConnectionError):
    """The peer sent something that is not a Modbus TCP response (connection closed)."""


class Response:
    """One response PDU: ``function_code``, ``exception_code`` (0: none) and its ``data``
    (the bytes after the function code). Reads decode with :meth:`registers`/:meth:`bits`."""

    __slots__ = ("function_code", "exception_code", "data")

    def __init__(self, function_code: int, exception_code: int, data: bytes) -> None:
        self.function_code = function_code
        self.exception_code = exception_code
        self.data = data

    def isError(self) -> bool:  # noqa: N802 - the name pymodbus responses use
        return self.exception_code != 0

    def registers(self, count: int) -> tuple[int, ...]:
        """``count`` registers of a read response (FC3/FC4)."""
        return struct.unpack_from(f">{count}H", self.data, 1)

    def bits(self, count: int) -> list[bool]:
        """``count`` bits of a read response (FC1/FC2)."""
        out: list[bool] = []
        for b in self.data[1 : 1 + (count + 7) // 8]:
            out.extend(_BITS[b])
        return out[:count]


def read_pdu(fc: int, address: int, count: int) -> bytes:
    """The request PDU of a read (FC1/2/3/4)."""
    return _READ.pack(fc, address, count)


def write_coil_pdu(address: int, value: bool) -> bytes:
    return _READ.pack(5, address, 0xFF00 if value else 0x0000)


def write_coils_pdu(address: int, values: list[bool]) -> bytes:
    n = len(values)
    packed = bytearray((n + 7) // 8)
    for i, v in enumerate(values):
        if v:
            packed[i >> 3] |= 1 << (i & 7)
    return _READ.pack(15, address, n) + bytes([len(packed)]) + bytes(packed)


def write_registers_pdu(address: int, words: list[int]) -> bytes:
    n = len(words)
    return _READ.pack(16, address, n) + bytes([2 * n]) + struct.pack(f">{n}H", *words)


def _expected_size(fc: int, request: bytes) -> int | None:
    """Size of a normal response PDU to ``request`` (None: not checked)."""
    if fc in (1, 2):
        return 2 + (int.from_bytes(request[3:5], "big") + 7) // 8
    if fc in (3, 4):
        return 2 + 2 * int.from_bytes(request[3:5], "big")
    if fc in (5, 6, 15, 16):
        return 5
    return None


class MbapClient(asyncio.Protocol):
    """One Modbus TCP connection. ``on_lost(exc)`` runs once when it closes by itself."""

    def __init__(self, on_lost: Callable[[BaseException | None], None] | None = None) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._tid = 0
        #: transaction id -> (its future, unit id, function code, request PDU)
        self._pending: dict[int, tuple[asyncio.Future[Response], int, int, bytes]] = {}
        self._on_lost = on_lost
        self._closed = False
        self.dropped = 0  # responses that matched no pending request

    # --- connection ------------------------------------------------------------------------
    async def connect(
        self, host: str, port: int, *, timeout: float, sslctx: ssl.SSLContext | None = None
    ) -> None:
        """Open the connection (and the TLS handshake). Raises OSError/TimeoutError/ssl.SSLError."""
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(
                lambda: self, host, port, ssl=sslctx, server_hostname=host if sslctx else None
            ),
            timeout,
        )

    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and not t.is_closing()

    def close(self) -> None:
        """Close without waiting; a pending request fails with ConnectionError."""
        self._closed = True
        t, self._transport = self._transport, None
        if t is not None:
            t.close()
        self._fail(ConnectionError("connection closed"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionError("connection closed by the peer"))
        if not self._closed:
            self._closed = True
            if self._on_lost is not None:
                self._on_lost(exc)

    # --- requests --------------------------------------------------------------------------
    async def request(self, unit: int, pdu: bytes, timeout: float) -> Response:
        """Send one request PDU to ``unit`` and wait for its response.

        Raises:
            TimeoutError: no response within ``timeout`` seconds.
            ConnectionError: the connection is down or closed meanwhile (FrameError: the peer
                sent a frame that is not Modbus TCP).
        """
        (fut,) = self._send_all(((unit, pdu),))
        timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._pending.clear()

    async def request_many(
        self, requests: Sequence[tuple[int, bytes]], timeout: float
    ) -> list[BaseException | Response]:
        """Send several requests back to back (one write, a transaction id each) and wait for
        all their responses: one round trip instead of one per request. For a server that
        takes pipelined requests (the Modbus TCP implementation guide lets a server serve
        several transactions; many devices do not), see ``ModbusLink(max_in_flight=...)``.

        Returns, in request order, each response or the exception that request ended with
        (TimeoutError: no response within ``timeout`` seconds of the send; ConnectionError as
        :meth:`request`).
        """
        futs = self._send_all(requests)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, _expire_all, futs)
        try:
            await asyncio.wait(futs)
        finally:
            timer.cancel()
            self._pending.clear()
            for f in futs:  # cancelled meanwhile: no "exception never retrieved" later
                if f.done() and not f.cancelled():
                    f.exception()
        return [f.exception() or f.result() for f in futs]

    def _send_all(self, requests: Iterable[tuple[int, bytes]]) -> list[asyncio.Future[Response]]:
        t = self._transport
        if t is None or t.is_closing():
            raise ConnectionError("not connected")
        if any(not f.done() for f, *_ in self._pending.values()):
            raise RuntimeError("MbapClient: one request (or batch) at a time")
        self._pending.clear()
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Response]] = []
        frames: list[bytes] = []
        for unit, pdu in requests:
            self._tid = tid = self._tid % 0xFFFF + 1
            fut: asyncio.Future[Response] = loop.create_future()
            self._pending[tid] = (fut, unit, pdu[0], pdu)
            futs.append(fut)
            frames.append(_HEAD.pack(tid, 0, len(pdu) + 1, unit) + pdu)
        t.write(frames[0] if len(frames) == 1 else b"".join(frames))
        return futs

    def _fail(self, exc: BaseException) -> None:
        for fut, *_ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while len(buf) >= 7:
            tid, pid, length, unit = _HEAD.unpack_from(buf)
            if pid != 0 or not 2 <= length <= MAX_LENGTH:
                self._buf = b""
                self._broken(f"protocol id {pid}, MBAP length {length}: not Modbus TCP")
                return
            end = 6 + length
            if len(buf) < end:
                break
            pdu = buf[7:end]
            buf = buf[end:]
            self._response(tid, unit, pdu)
        self._buf = buf

    def _response(self, tid: int, unit: int, pdu: bytes) -> None:
        hit = self._pending.get(tid)
        if hit is None or hit[0].done() or unit != hit[1]:
            self.dropped += 1  # a late answer to a request that timed out, or noise
            return
        fut, _unit, want_fc, request = hit
        fc = pdu[0]
        if fc == want_fc | 0x80:
            if len(pdu) != 2:
                self._broken(f"exception response of {len(pdu)} bytes, expected 2")
                return
            fut.set_result(Response(want_fc, pdu[1] or 0xFF, b""))
            return
        size = _expected_size(want_fc, request)
        if fc != want_fc or (size is not None and len(pdu) != size):
            self._broken(
                f"response function code {fc} of {len(pdu)} bytes to a request with "
                f"function code {want_fc} (expected {size} bytes)"
            )
            return
        fut.set_result(Response(fc, 0, pdu[1:]))

    def _broken(self, why: str) -> None:
        self._fail(FrameError(why))
        t = self._transport
        if t is not None:
            t.close()  # connection_lost reports the loss


def _expire(fut: asyncio.Future[Response]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _expire_all(futs: list[asyncio.Future[Response]]) -> None:
    for fut in futs:
        _expire(fut)
