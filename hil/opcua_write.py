"""Write requests in bulk on asyncua's server: one pass over the bytes, one handler call.

asyncua 2.1.0 decodes a WriteRequest into a ``WriteValue`` / ``NodeId`` / ``DataValue`` /
``Variant`` object per node (~25 us each: about a third of the emulator's time for the plant's
1,155-value step) and encodes a ``StatusCode`` object per result. A server that installs a
handler (:func:`install_bulk_write`) gets the Write requests of the plain shape the plant sends
-- scalar numeric values written to the Value attribute, no index range -- as lists decoded in
one pass (:func:`decode_nodes_to_write`), and answers them with the status codes packed at once.
Everything else (another attribute, an index range, arrays, strings, a ServerTimestamp, a
request the handler declines by returning None) goes through asyncua as before, from the same
bytes.

The session checks are asyncua's: a request without a session is refused, the secure channel's
permission ruleset is asked, the session's activity is touched; the handler runs with the peer
address set for :func:`hil.opcua_common.peer_of_current_request`. When the server has PreWrite or
PostWrite callbacks (asyncua's callback service) asyncua keeps every Write, so they see it.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.common.callback import CallbackType
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_to_binary

_log = logging.getLogger(__name__)

#: The attribute a handler is kept in on asyncua's InternalServer.
_ATTR = "gridtwin_bulk_write"
_WRITE_TYPEID = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)  # type: ignore[arg-type]
_VALUE = int(ua.AttributeIds.Value)
_I32 = struct.Struct("<i")
_NS_LEN = struct.Struct("<Hi")
_HEAD = struct.Struct("<IiB")  # AttributeId, IndexRange length, DataValue encoding mask
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
#: scalar numeric variant types and how they are packed (OPC UA binary is little-endian)
_SCALARS: dict[int, struct.Struct] = {
    ua.VariantType.Boolean.value: struct.Struct("<?"),
    ua.VariantType.SByte.value: struct.Struct("<b"),
    ua.VariantType.Byte.value: struct.Struct("<B"),
    ua.VariantType.Int16.value: struct.Struct("<h"),
    ua.VariantType.UInt16.value: struct.Struct("<H"),
    ua.VariantType.Int32.value: struct.Struct("<i"),
    ua.VariantType.UInt32.value: struct.Struct("<I"),
    ua.VariantType.Int64.value: struct.Struct("<q"),
    ua.VariantType.UInt64.value: struct.Struct("<Q"),
    ua.VariantType.Float.value: struct.Struct("<f"),
    ua.VariantType.Double.value: struct.Struct("<d"),
}
#: NodeId encodings of fixed length (encoding byte included)
_FIXED_NODEID = {0x00: 2, 0x01: 4, 0x02: 7, 0x04: 19}
#: DataValue mask bits this decoder takes: Value, StatusCode, SourceTimestamp
_DV_VALUE, _DV_STATUS, _DV_SOURCE_TS = 0x01, 0x02, 0x04


@dataclass(slots=True)
class DecodedWrite:
    """The NodesToWrite of a plain Write request, in request order.

    ``keys`` are the nodes' binary NodeId encodings (compare with
    ``asyncua.ua.ua_binary.nodeid_to_binary``), ``values`` the Python values asyncua would
    decode (bool, int or float), ``statuses`` the DataValues' status codes (0, Good, when the
    client sent none), ``ticks`` their SourceTimestamps in OPC UA ticks (100 ns since 1601;
    None when not sent).
    """

    keys: list[bytes]
    values: list[Any]
    statuses: list[int]
    ticks: list[int | None]


#: handler(decoded, user) -> one status code per value, or None to let asyncua handle it
BulkWriteHandler = Callable[[DecodedWrite, Any], Sequence[int] | np.ndarray | None]


def decode_nodes_to_write(data: bytes, pos: int = 0) -> DecodedWrite | None:
    """Decode a WriteRequest's NodesToWrite starting at ``data[pos]`` (its Int32 count).

    Returns None when any WriteValue is not of the plain shape (Value attribute, null index
    range, a scalar numeric Variant, no ServerTimestamp or picoseconds) or the bytes end early.
    A request laid out like a recent one (the same nodes, value type and mask: the plant's
    step) is decoded with array operations (:class:`_Layout`), anything else value by value.
    """
    try:
        (n,) = _I32.unpack_from(data, pos)
    except struct.error:
        return None
    pos += 4
    if n <= 0:
        return None
    shape = (n, len(data) - pos)
    layout = _LAYOUTS.get(shape)
    if layout is not None:
        got = layout.decode(data, pos)
        if got is not None:
            return got
    got = _decode_uniform(data, pos, n, shape)
    if got is not None:
        return got
    try:
        keys: list[bytes] = []
        values: list[Any] = []
        statuses: list[int] = []
        ticks: list[int | None] = []
        offsets: list[int] = []  # of each value, from the first WriteValue
        kinds: set[tuple[int, int]] = set()  # (mask, variant type) seen
        start = pos
        fixed = _FIXED_NODEID
        scalars = _SCALARS
        head = _HEAD.unpack_from
        ns_len = _NS_LEN.unpack_from
        u32 = _U32.unpack_from
        i64 = _I64.unpack_from
        for _ in range(n):
            enc = data[pos]
            size = fixed.get(enc)
            if size is None:
                if enc not in (0x03, 0x05):  # String, ByteString (no ExpandedNodeId flags)
                    return None
                length = ns_len(data, pos + 1)[1]
                size = 7 + max(length, 0)
            end = pos + size
            keys.append(data[pos:end])
            attr, index_range, mask = head(data, end)
            if attr != _VALUE or index_range != -1 or mask & ~0x07 or not mask & _DV_VALUE:
                return None
            pos = end + 9
            vt = data[pos]
            fmt = scalars.get(vt)  # array and dimension bits make it unknown here
            if fmt is None:
                return None
            kinds.add((mask, vt))
            offsets.append(pos + 1 - start)
            values.append(fmt.unpack_from(data, pos + 1)[0])
            pos += 1 + fmt.size
            if mask & _DV_STATUS:
                statuses.append(u32(data, pos)[0])
                pos += 4
            else:
                statuses.append(0)
            if mask & _DV_SOURCE_TS:
                ticks.append(i64(data, pos)[0])
                pos += 8
            else:
                ticks.append(None)
        if pos > len(data):
            return None
    except (IndexError, struct.error):
        return None
    if len(kinds) == 1 and n >= _LAYOUT_MIN:
        ((mask, vt),) = kinds
        if vt in _DTYPES:
            if len(_LAYOUTS) >= _LAYOUT_CACHE:
                del _LAYOUTS[next(iter(_LAYOUTS))]
            _LAYOUTS[shape] = _Layout(data, start, pos - start, keys, offsets, mask, vt)
    return DecodedWrite(keys, values, statuses, ticks)


def _decode_uniform(data: bytes, pos: int, n: int, shape: tuple[int, int]) -> DecodedWrite | None:
    """NodesToWrite whose WriteValues all have a String NodeId and the first one's attribute,
    index range, mask and value type (the plant's step): the chain of node id lengths walked
    in Python, everything else checked and taken with array operations. None: not uniform."""
    try:
        if data[pos] != 0x03:
            return None
        key_end = pos + 7 + _NS_LEN.unpack_from(data, pos + 1)[1]
        attr, index_range, mask = _HEAD.unpack_from(data, key_end)
        vt = data[key_end + 9]
    except (IndexError, struct.error):
        return None
    if attr != _VALUE or index_range != -1 or mask & ~0x07 or not mask & _DV_VALUE:
        return None
    dt = _DTYPES.get(vt)
    if dt is None:
        return None
    dtype = np.dtype(dt)
    tail = 10 + dtype.itemsize + (4 if mask & _DV_STATUS else 0)
    tail += 8 if mask & _DV_SOURCE_TS else 0
    starts = [0] * n
    ends = [0] * n
    length = _I32.unpack_from
    p = pos
    try:
        for k in range(n):
            size = length(data, p + 3)[0]
            if size < 0:
                return None
            starts[k] = p
            ends[k] = p = p + 7 + size
            p += tail
    except struct.error:
        return None
    if p > len(data):
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    st = np.asarray(starts, dtype=np.intp)
    en = np.asarray(ends, dtype=np.intp)
    if not (buf[st] == 0x03).all():
        return None
    head = buf[key_end : key_end + 10]
    if not (buf[en[:, None] + np.arange(10)] == head).all():
        return None
    keys = [data[a:b] for a, b in zip(starts, ends)]
    offsets = en + 10
    values = buf[offsets[:, None] + np.arange(dtype.itemsize)].copy().view(dtype).reshape(n)
    after = offsets + dtype.itemsize
    statuses: list[int]
    if mask & _DV_STATUS:
        statuses = buf[after[:, None] + np.arange(4)].copy().view("<u4").reshape(n).tolist()
        after = after + 4
    else:
        statuses = [0] * n
    ticks: list[int | None]
    if mask & _DV_SOURCE_TS:
        ticks = buf[after[:, None] + np.arange(8)].copy().view("<i8").reshape(n).tolist()
    else:
        ticks = [None] * n
    if n >= _LAYOUT_MIN and _seen_before(shape):
        if len(_LAYOUTS) >= _LAYOUT_CACHE:
            del _LAYOUTS[next(iter(_LAYOUTS))]
        _LAYOUTS[shape] = _Layout(data, pos, p - pos, keys, (offsets - pos).tolist(), mask, vt)
    return DecodedWrite(keys, values.tolist(), statuses, ticks)


_SEEN: dict[tuple[int, int], None] = {}


def _seen_before(shape: tuple[int, int]) -> bool:
    """Whether a request of this (count, length) came recently: a layout is made on the second
    one (a deadband that sends a different subset every step never repeats a shape)."""
    if shape in _SEEN:
        return True
    if len(_SEEN) >= 64:
        del _SEEN[next(iter(_SEEN))]
    _SEEN[shape] = None
    return False


#: numpy dtypes of the variant types a layout decodes (Boolean goes value by value)
_DTYPES: dict[int, str] = {
    ua.VariantType.SByte.value: "i1",
    ua.VariantType.Byte.value: "u1",
    ua.VariantType.Int16.value: "<i2",
    ua.VariantType.UInt16.value: "<u2",
    ua.VariantType.Int32.value: "<i4",
    ua.VariantType.UInt32.value: "<u4",
    ua.VariantType.Int64.value: "<i8",
    ua.VariantType.UInt64.value: "<u8",
    ua.VariantType.Float.value: "<f4",
    ua.VariantType.Double.value: "<f8",
}
#: layouts are kept for requests of at least this many values, at most this many layouts
_LAYOUT_MIN = 16
_LAYOUT_CACHE = 8


class _Layout:
    """Where the values, status codes and timestamps sit in a request of one node sequence,
    one mask and one value type; every other byte is compared with the request it was made
    from, so a request decoded through it is byte for byte of that shape."""

    def __init__(
        self,
        data: bytes,
        start: int,
        size: int,
        keys: list[bytes],
        offsets: list[int],
        mask: int,
        vt: int,
    ) -> None:
        self.size = size
        self.keys = keys
        self.dtype = np.dtype(_DTYPES[vt])
        width = self.dtype.itemsize
        off = np.asarray(offsets, dtype=np.intp)
        self.value_at = off[:, None] + np.arange(width)
        dynamic = [self.value_at.ravel()]
        after = off + width
        self.status_at = None
        if mask & _DV_STATUS:
            self.status_at = after[:, None] + np.arange(4)
            dynamic.append(self.status_at.ravel())
            after = after + 4
        self.ticks_at = None
        if mask & _DV_SOURCE_TS:
            self.ticks_at = after[:, None] + np.arange(8)
            dynamic.append(self.ticks_at.ravel())
        template = np.frombuffer(data, dtype=np.uint8, count=size, offset=start).copy()
        template[np.concatenate(dynamic)] = 0
        self.template = template.tobytes()
        self.dynamic = np.concatenate(dynamic)

    def decode(self, data: bytes, pos: int) -> DecodedWrite | None:
        if len(data) - pos < self.size:
            return None
        buf = np.frombuffer(data, dtype=np.uint8, count=self.size, offset=pos)
        check = buf.copy()
        check[self.dynamic] = 0
        if check.tobytes() != self.template:
            return None
        n = len(self.keys)
        values = buf[self.value_at].copy().view(self.dtype).reshape(n).tolist()
        if self.status_at is not None:
            statuses = buf[self.status_at].copy().view("<u4").reshape(n).tolist()
        else:
            statuses = [0] * n
        ticks: list[int | None]
        if self.ticks_at is not None:
            ticks = buf[self.ticks_at].copy().view("<i8").reshape(n).tolist()
        else:
            ticks = [None] * n
        return DecodedWrite(self.keys, values, statuses, ticks)


_LAYOUTS: dict[tuple[int, int], _Layout] = {}


def install_bulk_write(server: Any, handler: BulkWriteHandler | None) -> None:
    """Give ``server`` (an asyncua Server) a bulk Write handler (None removes it)."""
    _patch_processor()
    setattr(server.iserver, _ATTR, handler)


def _peer_label(name: Any) -> str:
    """``host:port`` of a session named by asyncua after its peer (IPv6 in brackets)."""
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name)


_ORIGINAL: Any = None


def _patch_processor() -> None:
    """Wrap asyncua 2.1.0's ``UaProcessor._process_message`` once (servers opt in per
    InternalServer; without a handler every request goes the original way)."""
    global _ORIGINAL
    if _ORIGINAL is not None:
        return
    original = UaProcessor._process_message
    _ORIGINAL = original

    async def _process_message(self: Any, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any):
        handler = getattr(self.iserver, _ATTR, None)
        if handler is not None and typeid == _WRITE_TYPEID and self.session is not None:
            if _bulk_write(self, handler, requesthdr, seqhdr, body):
                return True
        return await original(self, typeid, requesthdr, seqhdr, body)

    UaProcessor._process_message = _process_message  # type: ignore[method-assign]


def _has_write_callbacks(iserver: Any) -> bool:
    listeners = getattr(getattr(iserver, "callback_service", None), "_listeners", None)
    if not isinstance(listeners, dict):
        return True  # unknown layout: let asyncua dispatch
    return bool(listeners.get(CallbackType.PreWrite) or listeners.get(CallbackType.PostWrite))


def _bulk_write(
    proc: Any, handler: BulkWriteHandler, requesthdr: Any, seqhdr: Any, body: Any
) -> bool:
    """Serve one Write request in bulk; False: not of the plain shape, asyncua serves it."""
    from hil.opcua_common import _PEER

    session = proc.session
    user = session.user
    policy = proc._connection.security_policy
    if (
        policy.permissions is not None
        and policy.permissions.check_validity(user, _WRITE_TYPEID, body) is False
    ):
        raise ua.uaerrors.BadUserAccessDenied  # as asyncua does (a ServiceFault)
    if _has_write_callbacks(proc.iserver):
        return False
    decoded = decode_nodes_to_write(body._data, body.cur_pos)  # body itself stays unread
    if decoded is None:
        return False
    proc.session_last_activity = time.monotonic()
    session.touch()
    token = _PEER.set(_peer_label(session.name))
    try:
        codes = handler(decoded, user)
    finally:
        _PEER.reset(token)
    if codes is None:
        return False
    results = np.asarray(codes, dtype="<u4")
    if results.shape != (len(decoded.keys),):
        raise ValueError(
            f"bulk write handler: expected {len(decoded.keys)} status codes, found {results.shape}"
        )
    response = ua.WriteResponse()
    response.ResponseHeader.RequestHandle = requesthdr.RequestHandle
    empty = struct_to_binary(response)  # ... Results count 0, DiagnosticInfos count 0
    binresp = empty[:-8] + _I32.pack(results.size) + results.tobytes() + empty[-4:]
    data = proc._connection.message_to_binary(
        binresp, message_type=ua.MessageType.SecureMessage, request_id=seqhdr.RequestId
    )
    proc._transport.write(data)
    return True
