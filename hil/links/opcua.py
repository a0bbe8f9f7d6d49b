"""OPC UA field link (asyncua 2.1.0 client).

- Inputs come from one subscription (sampling interval per link), or from one Read request per
  :meth:`OpcuaLink.poll` in polled mode. A value's timestamp is its SourceTimestamp. Staleness
  comes from the protocol in both modes: an input is STALE when its subscription stops publishing
  (or the Reads stop succeeding) for ``stale_factor * interval_s``, or when a change arrives
  already older than that; an unchanged value the server still serves as Good stays GOOD.
- All outputs of a step go in one Write request; per-node bad status codes become ProtocolError
  naming the point and the status code. The request body is assembled from byte strings encoded
  once per point (node id, attribute, DataValue mask, variant type) plus the packed value and
  timestamp, and sent through asyncua's own secure channel (sequence numbers, chunking, signing):
  building and encoding asyncua's WriteValue objects costs ~25 us per value, this ~0.5 us.
  :meth:`OpcuaLink.prepare_outputs` and :meth:`OpcuaLink.write_batch` add a vectorised deadband
  for the sync loop's fixed set of outputs.
- Reconnection is managed here with asyncua's ``auto_reconnect`` off: on a loss (socket closed,
  watchdog probe failed, subscription status bad) the old client is dropped and a *fresh* Client
  object connects, with a bounded exponential backoff. Reusing a client after a network
  blackhole could hang (FIELD-NOTES), and a fresh client also re-creates the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import Client, Node, ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import (
    Primitives,
    nodeid_from_binary,
    nodeid_to_binary,
    struct_from_binary,
    struct_to_binary,
)
from asyncua.ua.uaerrors import UaStatusCodeError

from hil.errors import CommsLost, HilTimeout, ProtocolError, WriteRejected
from hil.links.base import FieldLink
from hil.links.base import OutputBatch as BaseOutputBatch
from twin.pointmap import Point
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

_INTEGER = {
    ua.VariantType.SByte,
    ua.VariantType.Byte,
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
    ua.VariantType.Int64,
    ua.VariantType.UInt64,
}
_NUMERIC = _INTEGER | {ua.VariantType.Float, ua.VariantType.Double, ua.VariantType.Boolean}


#: struct formats of the numeric variant types (OPC UA binary is little-endian)
_PACK: dict[ua.VariantType, struct.Struct] = {
    ua.VariantType.Boolean: struct.Struct("<?"),
    ua.VariantType.SByte: struct.Struct("<b"),
    ua.VariantType.Byte: struct.Struct("<B"),
    ua.VariantType.Int16: struct.Struct("<h"),
    ua.VariantType.UInt16: struct.Struct("<H"),
    ua.VariantType.Int32: struct.Struct("<i"),
    ua.VariantType.UInt32: struct.Struct("<I"),
    ua.VariantType.Int64: struct.Struct("<q"),
    ua.VariantType.UInt64: struct.Struct("<Q"),
    ua.VariantType.Float: struct.Struct("<f"),
    ua.VariantType.Double: struct.Struct("<d"),
}
_INT32 = struct.Struct("<i")
# WriteValue after the NodeId: AttributeId Value (UInt32), IndexRange null (String length -1)
_VALUE_ATTRIBUTE = struct.pack("<Ii", int(ua.AttributeIds.Value), -1)
_DV_VALUE = 0x01  # DataValue encoding mask bits (OPC UA Part 6, 5.2.2.17)
_DV_STATUS = 0x02  # asyncua always sends StatusCode Good with a value: so do we
_DV_SOURCE_TIMESTAMP = 0x04
_GOOD = struct.pack("<I", 0)


def _status_name(code: ua.StatusCode | int) -> str:
    if isinstance(code, ua.StatusCode):
        return code.name
    return ua.StatusCode(code).name


def _to_python(value: float, vtype: ua.VariantType) -> Any:
    if vtype == ua.VariantType.Boolean:
        return bool(round(value))
    if vtype in _INTEGER:
        return int(round(value))
    return float(value)


def _same_value(a: float, b: float) -> bool:
    """Equal, NaN equal to NaN (a device's "not available" read twice is no change)."""
    return a == b or (a != a and b != b)


def _timestamp(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # asyncua decodes UTC; be explicit rather than assume local time
        dt = dt.replace(tzinfo=UTC)
    ts = dt.timestamp()
    return ts if ts > 0 else None  # the OPC UA "null" date (1601) is no timestamp


class _Handler:
    """Subscription callbacks of one client generation; late callbacks of old ones are ignored."""

    def __init__(self, link: OpcuaLink, generation: int) -> None:
        self.link = link
        self.generation = generation

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        if self.generation != self.link._generation:
            return
        self.link._on_data(node.nodeid, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        if self.generation != self.link._generation:
            return
        code = getattr(status, "Status", status)
        if isinstance(code, ua.StatusCode) and not code.is_good():
            self.link._lost(f"subscription status {code.name}")


class OpcuaLink(FieldLink):
    """An OPC UA client link to one server endpoint.

    Args:
        endpoint: ``opc.tcp://host:port/path``.
        points: the points this link carries; each needs an OPC UA binding.
        user, password: UserName login (the twin logs in as the ``plant`` role); None: anonymous.
        security: asyncua security string, e.g.
            ``"Basic256Sha256,SignAndEncrypt,client_cert.der,client_key.pem[,server_cert.der]"``;
            None for no security.
        server_trust: folder of trusted server certificates (a PKI's ``trusted/``): with
            security, a server whose certificate is not in it is refused before the session is
            activated (``ProtocolError`` code BadCertificateUntrusted naming the certificate
            and how to trust it; the certificate is saved to ``rejected/`` beside the folder).
            None: only a certificate pinned in ``security`` (5th field) is checked.
        mode: ``"subscription"`` (default) or ``"poll"`` (one Read per :meth:`poll`).
        sampling_interval_s: subscription sampling and publishing interval.
        poll_interval_s: in poll mode, when set, a background task polls at this period.
        timeout_s: per-request timeout (and connect timeout).
        watchdog_s: how often an idle connection is probed (asyncua reads ServerState).
        session_timeout_s: requested session timeout; the server drops the session after this long
            without requests.
        backoff_min_s, backoff_max_s: reconnect delay, doubling from min up to max.
        namespace: namespace URI of the point node ids; its index is looked up on every connect
            and replaces the index written in the node ids (servers may number namespaces
            differently). None: use the node ids as written.
        write_timestamps: send a SourceTimestamp with written values (some servers refuse it).
    """

    protocol = "opcua"
    _retry_on = (CommsLost, HilTimeout, ProtocolError)
    _log = _log

    def __init__(
        self,
        endpoint: str,
        points: Iterable[Point],
        *,
        user: str | None = None,
        password: str | None = None,
        security: str | None = None,
        server_trust: str | Path | None = None,
        mode: str = "subscription",
        sampling_interval_s: float = 0.1,
        poll_interval_s: float | None = None,
        timeout_s: float = 2.0,
        watchdog_s: float = 1.0,
        session_timeout_s: float = 30.0,
        backoff_min_s: float = 0.2,
        backoff_max_s: float = 5.0,
        namespace: str | None = None,
        write_timestamps: bool = True,
        stale_factor: float = 3.0,
        clock: Callable[[], float] | None = None,
        name: str | None = None,
    ) -> None:
        pts = tuple(points)
        missing = [p.name for p in pts if p.opcua is None]
        if missing:
            raise ValueError(
                f"opcua link {endpoint}: expected points with an OPC UA binding, "
                f"found none on {', '.join(missing[:5])}"
            )
        if mode not in ("subscription", "poll"):
            raise ValueError(
                f"opcua link {endpoint}: mode: expected subscription or poll, found {mode!r}"
            )
        super().__init__(
            name or f"opcua:{endpoint}",
            pts,
            stale_factor=stale_factor,
            clock=clock,
            backoff_min_s=backoff_min_s,
            backoff_max_s=backoff_max_s,
        )
        self.endpoint = endpoint
        self.user = user
        self.password = password
        self.security = security
        self.server_trust = Path(server_trust) if server_trust is not None else None
        self.mode = mode
        self.sampling_interval_s = float(sampling_interval_s)
        self.poll_interval_s = poll_interval_s
        self.timeout_s = float(timeout_s)
        self.watchdog_s = float(watchdog_s)
        self.session_timeout_s = float(session_timeout_s)
        self.namespace = namespace
        self.write_timestamps = write_timestamps
        self.stats["reconnect_attempts"] = 0
        self.stats["requests"] = 0
        self._client: Client | None = None
        self._node: dict[str, ua.NodeId] = {}
        self._name_of: dict[ua.NodeId, str] = {}
        self._vtype: dict[str, ua.VariantType] = {}
        self._old_clients: set[asyncio.Task[None]] = set()
        self._node_version = 0  # bumped whenever node ids are (re)resolved
        self._prefix: dict[str, bytes] = {}  # encoded WriteValue head per point
        self._prefix_version = -1
        self._fast_send = True  # asyncua's channel internals as expected (checked on use)
        self._warned_unchecked = False
        self._sub: Any = None  # the inputs' subscription (subscription mode, once connected)
        #: inputs notified since (re)subscribing; of those, the ones whose last change came late
        self._seen: set[str] = set()
        self._late: set[str] = set()
        self._polled_at: float | None = None  # clock() of the last Read of every input (poll)

    @property
    def polled(self) -> bool:
        return self.mode == "poll" and not self.poll_interval_s

    # --- connection ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect, log in, resolve the nodes and subscribe.

        Raises:
            CommsLost: the server cannot be reached.
            HilTimeout: it did not answer in time.
            ProtocolError: the server refused (login, security) or a point's node is missing.
        """
        self._closing = False
        if self.connected:
            return
        await self._stop_reconnecting()
        self._adopt(await self._open())
        if self.poll_interval_s and self.mode == "poll":
            self._start_polling()

    async def _open(self) -> Client:
        self._generation += 1
        gen = self._generation
        client = Client(
            self.endpoint,
            timeout=self.timeout_s,
            watchdog_intervall=self.watchdog_s,
            auto_reconnect=False,
        )
        client.session_timeout = int(self.session_timeout_s * 1000)
        client.name = client.description = "gridtwin twin"
        if self.user is not None:
            client.set_user(self.user)
            client.set_password(self.password or "")
        self._check_server(client)
        try:
            if self.security:
                await client.set_security_string(self.security)
            await asyncio.wait_for(client.connect(), self.timeout_s * 3)
        except Exception as exc:
            self._discard(client)
            raise self._map_error(exc, "connect") from exc
        except BaseException:  # cancelled (close() during a reconnect): leave nothing open
            self._discard(client)
            raise
        try:
            await self._setup(client, gen)
        except Exception as exc:
            self._discard(client)
            raise self._map_error(exc, "set-up") from exc
        except BaseException:
            self._discard(client)
            raise

        async def lost(exc: Exception) -> None:
            if gen == self._generation:
                self._lost(f"connection lost ({exc!r})")

        client.connection_lost_callback = lost
        return client

    def _check_server(self, client: Client) -> None:
        """Set the client-side trust list (checked in CreateSession, before any login)."""
        if not self.security:
            return
        parts = self.security.split(",")
        if len(parts) >= 4:  # announce the application URI our certificate names
            from hil.security.certs import CertificateError, app_uri_of

            with contextlib.suppress(CertificateError):
                client.application_uri = app_uri_of(parts[2])
        if self.server_trust is not None:
            from hil.security.certs import ServerTrust

            client.certificate_validator = ServerTrust(self.server_trust)
        elif len(parts) < 5 and not self._warned_unchecked:
            self._warned_unchecked = True
            _log.warning(
                "%s: the server's certificate is not checked (expected server_trust or a pinned "
                "server certificate)",
                self.name,
            )

    def _adopt(self, client: Client) -> None:
        super()._adopt(client)
        _log.info("%s connected (%s mode)", self.name, self.mode)

    async def _setup(self, client: Client, gen: int) -> None:
        """Resolve node ids and data types, then subscribe (subscription mode)."""
        ns_index: int | None = None
        if self.namespace:
            ns_index = await client.get_namespace_index(self.namespace)
        self._node.clear()
        self._name_of.clear()
        self._node_version += 1
        for p in self.points:
            assert p.opcua is not None
            nid = ua.NodeId.from_string(p.opcua.node_id)
            if ns_index is not None:
                nid = ua.NodeId(nid.Identifier, ns_index, nid.NodeIdType)
            self._node[p.name] = nid
            self._name_of[nid] = p.name
        names = [p.name for p in self.points]
        # a (re)connect starts over: the first value of each input is its current one
        self._seen.clear()
        self._late.clear()
        self._polled_at = None
        self.stats["requests"] += 1
        dts = await client.uaclient.read_attributes(
            [self._node[n] for n in names], ua.AttributeIds.DataType
        )
        for n, dv in zip(names, dts):
            if not dv.StatusCode.is_good():
                raise ProtocolError(
                    "opcua",
                    dv.StatusCode.name,
                    f"expected node {self._node[n].to_string()} on {self.endpoint}, "
                    "the server refused to read its data type",
                    point=n,
                )
            vt = ua.datatype_to_varianttype(dv.Value.Value)
            self._vtype[n] = vt if isinstance(vt, ua.VariantType) else ua.VariantType.Double
        if self.mode == "subscription" and self.inputs:
            ms = self.sampling_interval_s * 1000.0
            # A publish (notifications or a keep-alive) at least once per shortest input
            # interval: silence longer than stale_factor intervals means the server stopped.
            shortest = min(p.interval_s for p in self.inputs)
            keep = max(1, int(shortest * 1000.0 / ms)) if ms > 0 else 1
            params = ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=ms,
                RequestedLifetimeCount=max(10000, 3 * keep),
                RequestedMaxKeepAliveCount=keep,
                MaxNotificationsPerPublish=10000,
                PublishingEnabled=True,
                Priority=0,
            )
            self._seen.clear()
            self._late.clear()
            sub = await client.create_subscription(params, _Handler(self, gen))
            self._sub = sub
            nodes = [client.get_node(self._node[p.name]) for p in self.inputs]
            # Trigger on timestamp changes too: a device refreshing an unchanged value must not
            # look stale to us. (_subscribe is asyncua's filter-taking variant of
            # subscribe_data_change; asyncua is pinned to 2.1.0.)
            mfilter = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
            handles = await sub._subscribe(
                nodes, mfilter=mfilter, sampling_interval=ua.Double(ms), queuesize=1
            )
            for p, h in zip(self.inputs, handles):
                if isinstance(h, ua.StatusCode):
                    raise ProtocolError(
                        "opcua", h.name, "monitored item refused by the server", point=p.name
                    )
        elif self.mode == "poll" and self.inputs:
            await self._read_inputs_once(client)

    def _map_error(self, exc: BaseException, what: str) -> Exception:
        self._note_error(exc)
        if isinstance(exc, ProtocolError | CommsLost | HilTimeout):
            return exc
        from hil.security.certs import UntrustedServer

        if isinstance(exc, UntrustedServer):
            return ProtocolError("opcua", exc.code, f"{what} on {self.endpoint} refused: {exc}")
        if isinstance(exc, UaStatusCodeError):
            return ProtocolError(
                "opcua", _status_name(exc.code), f"{what} on {self.endpoint} refused: {exc}"
            )
        if isinstance(exc, TimeoutError):
            return HilTimeout(f"{self.name}: {what}", self.timeout_s)
        return CommsLost(f"{self.name}: {what}: expected an OPC UA server, found {exc!r}")

    def _discard(self, client: Client) -> None:
        """Drop a client without waiting on it (a hung one must not block us)."""

        async def bye() -> None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(client.disconnect(), 1.0)
            # whatever disconnect() left behind (supervisor, renew, watchdog): gone now
            for attr in ("_supervisor_task", "_stale_watchdog_task", "_renew_channel_task"):
                task = getattr(client, attr, None)
                if task is not None and not task.done():
                    task.cancel()
            with contextlib.suppress(Exception):
                client.disconnect_socket()

        task = asyncio.get_running_loop().create_task(bye(), name=f"{self.name} drop client")
        self._old_clients.add(task)
        task.add_done_callback(self._old_clients.discard)

    async def close(self) -> None:
        await self._shut_down()
        if self._old_clients:
            await asyncio.gather(*list(self._old_clients), return_exceptions=True)

    # --- inputs --------------------------------------------------------------------------------
    def _sample(self, dv: ua.DataValue) -> Sample:
        ts = _timestamp(dv.SourceTimestamp) or _timestamp(dv.ServerTimestamp) or self.clock()
        raw = dv.Value.Value if dv.Value is not None else None
        try:
            value = float(raw)  # bool -> 0.0/1.0
        except (TypeError, ValueError):
            value = math.nan
        status = dv.StatusCode
        if status is not None and not status.is_good():
            return Sample(value, Quality.INVALID, ts)
        return Sample.good(value, ts)

    def _on_data(self, nodeid: ua.NodeId, dv: ua.DataValue) -> None:
        name = self._name_of.get(nodeid)
        if name is None:
            return
        self.stats["reads"] += 1
        sample = self._sample(dv)
        self._changed(name, sample, self.clock())
        self._store_input(name, sample)

    def _changed(self, name: str, sample: Sample, now: float) -> None:
        """Judge a value the server says changed (a notification, or a polled value that differs
        from the last one read): a change stamped long ago is late (STALE on arrival, until its
        next timely change). The first value after (re)connecting is the item's current value,
        whatever its age."""
        if name in self._seen:
            if now - sample.timestamp > self.stale_factor * self._by_name[name].interval_s:
                self._late.add(name)
            else:
                self._late.discard(name)
        else:
            self._seen.add(name)
            self._late.discard(name)

    @property
    def polled_at(self) -> float | None:
        """Poll mode: ``clock()`` time of the last successful Read of every input (None before
        the first one after a (re)connect)."""
        return self._polled_at

    def read_inputs(self, now: float | None = None) -> dict[str, Sample]:
        """As :meth:`FieldLink.read_inputs`, with staleness from the protocol in subscription
        mode: a subscribed input is STALE only when the subscription stopped publishing
        (neither notifications nor keep-alives for ``stale_factor * interval_s``) or its last
        change arrived with a source timestamp already older than that; an unchanged value
        of a live subscription stays GOOD, whatever its age.

        Poll mode, the same rule on the Reads: an input is STALE when no Read of the inputs has
        succeeded for ``stale_factor * interval_s`` of link time (``now``), or when its last
        change (a value, status or timestamp different from the previous Read) came with a
        source timestamp already older than that; a value the server still returns unchanged
        with status Good stays GOOD, whatever its age."""
        out = super().read_inputs(now)
        if not self.connected:
            return out
        keep_s = 0.0
        if self.mode == "poll":
            if self._polled_at is None:
                return out  # nothing read yet since connecting: the timestamp rule
            silent = (self.clock() if now is None else now) - self._polled_at
        else:
            sub = self._sub
            last = getattr(sub, "last_publish_at", None) if sub is not None else None
            if last is None:
                return out  # nothing published yet: the timestamp rule until the first publish
            silent = time.monotonic() - last
            params = getattr(sub, "parameters", None)
            if params is not None:
                keep_s = (
                    float(params.RequestedPublishingInterval or 0.0)
                    / 1000.0
                    * max(int(params.RequestedMaxKeepAliveCount or 1), 1)
                )
        cache = self._cache
        stale = Quality.STALE
        for p in self.inputs:
            name = p.name
            s = out[name]
            if name in self.cut_points:
                continue
            window = self.stale_factor * max(p.interval_s, keep_s)
            if silent > window:
                if s.quality.is_good:
                    out[name] = Sample(s.value, stale, s.timestamp)
            elif s.quality is stale and name not in self._late:
                cached = cache.get(name)
                if cached is not None and cached.quality.is_good:
                    out[name] = cached
        return out

    async def _read_inputs_once(self, client: Client) -> None:
        self.stats["requests"] += 1
        dvs = await asyncio.wait_for(
            client.uaclient.read_attributes(
                [self._node[p.name] for p in self.inputs], ua.AttributeIds.Value
            ),
            self.timeout_s + 0.5,
        )
        now = self.clock()
        cache = self._cache
        for p, dv in zip(self.inputs, dvs):
            name = p.name
            sample = self._sample(dv)
            last = cache.get(name)
            if (
                last is None
                or name not in self._seen
                or last.timestamp != sample.timestamp
                or last.quality is not sample.quality
                or not _same_value(last.value, sample.value)
            ):
                self._changed(name, sample, now)
            self._store_input(name, sample, notify=False)
        self._polled_at = now
        self.stats["reads"] += 1
        self._notify()

    async def poll(self) -> None:
        """Read every input in one Read request (works in subscription mode too)."""
        client = self._require("read inputs")
        try:
            await self._read_inputs_once(client)
        except Exception as exc:
            raise self._failed(exc, "read inputs") from exc

    async def read_back(self, names: Iterable[str]) -> dict[str, Sample]:
        """Read points (outputs too) in one Read request: reconcile after a return (issue 11)."""
        client = self._require("read back")
        names = list(names)
        try:
            self.stats["requests"] += 1
            dvs = await asyncio.wait_for(
                client.uaclient.read_attributes(
                    [self._node[n] for n in names], ua.AttributeIds.Value
                ),
                self.timeout_s + 0.5,
            )
        except Exception as exc:
            raise self._failed(exc, "read back") from exc
        return {n: self._sample(dv) for n, dv in zip(names, dvs)}

    def _require(self, what: str) -> Client:
        if self._client is None or not self.connected:
            raise CommsLost(f"{self.name}: {what}: expected a connected link, found it down")
        return self._client

    def _failed(self, exc: BaseException, what: str) -> Exception:
        err = self._map_error(exc, what)
        if isinstance(err, CommsLost | HilTimeout):
            self._lost(str(err))
        return err

    # --- outputs -------------------------------------------------------------------------------
    def _vtype_checked(self, point: Point) -> ua.VariantType:
        vt = self._vtype.get(point.name, ua.VariantType.Double)
        if vt not in _NUMERIC:
            raise ProtocolError(
                "opcua", "BadTypeMismatch", f"expected a numeric node, found {vt.name}", point.name
            )
        return vt

    def _prefixes(self) -> dict[str, bytes]:
        """Encoded WriteValue heads (node id, attribute, DataValue mask, variant type) per point.

        Rebuilt after each (re)connect: the namespace index and data types are looked up again.
        """
        if self._prefix_version != self._node_version:
            mask = _DV_VALUE | _DV_STATUS | (_DV_SOURCE_TIMESTAMP if self.write_timestamps else 0)
            self._prefix = {}
            for p in self.outputs:
                nid = self._node.get(p.name)
                vt = self._vtype.get(p.name, ua.VariantType.Double)
                if nid is None or vt not in _NUMERIC:
                    continue
                self._prefix[p.name] = (
                    nodeid_to_binary(nid) + _VALUE_ATTRIBUTE + bytes((mask, vt.value))
                )
            self._prefix_version = self._node_version
        return self._prefix

    def _timestamp_bytes(self) -> bytes:
        """What follows each value: StatusCode Good, then the SourceTimestamp (if sent)."""
        if not self.write_timestamps:
            return _GOOD
        return _GOOD + Primitives.DateTime.pack(datetime.fromtimestamp(self.clock(), UTC))

    def _encode(self, items: list[tuple[Point, float]]) -> bytes:
        """Int32 count + the encoded WriteValues of ``items`` (the Write request's NodesToWrite)."""
        prefixes = self._prefixes()
        ts = self._timestamp_bytes()
        parts = [_INT32.pack(len(items))]
        for p, v in items:
            vt = self._vtype_checked(p)
            try:
                parts.append(prefixes[p.name] + _PACK[vt].pack(_to_python(v, vt)) + ts)
            except struct.error as exc:
                raise ProtocolError(
                    "opcua", "BadOutOfRange", f"value {v!r} does not fit {vt.name}: {exc}", p.name
                ) from None
        return b"".join(parts)

    async def _send(self, items: list[tuple[Point, float]]) -> None:
        """All values in one Write request; bad per-node results raise ProtocolError."""
        client = self._require("write")
        for p, _v in items:
            self._vtype_checked(p)
        body = self._encode(items)
        await self._write_encoded(client, body, [p.name for p, _v in items])

    async def _write_encoded(self, client: Client, body: bytes, names: Sequence[str]) -> None:
        """Send one Write request whose NodesToWrite is ``body``; check every node's status."""
        self.stats["requests"] += 1
        try:
            codes = await asyncio.wait_for(self._request(client, body), self.timeout_s + 0.5)
        except Exception as exc:
            raise self._failed(exc, f"write {len(names)} value(s)") from exc
        if codes.shape[0] != len(names):
            err = ProtocolError(
                "opcua",
                "BadUnexpectedError",
                f"expected {len(names)} write results from {self.endpoint}, found {codes.shape[0]}",
            )
            self._note_error(err)
            raise err
        bad = np.flatnonzero(codes >> 30)  # severity bits: uncertain or bad
        if bad.size:
            first = int(bad[0])
            more = ", ".join(names[int(i)] for i in bad[1:])
            err = ProtocolError(
                "opcua",
                _status_name(int(codes[first])),
                f"write refused by {self.endpoint}"
                + (f" (and {bad.size - 1} more: {more})" if bad.size > 1 else ""),
                point=names[first],
            )
            self._note_error(err)
            raise err
        self.stats["writes"] += 1

    async def _request(self, client: Client, body: bytes) -> np.ndarray:
        """One Write request with a pre-encoded NodesToWrite; the per-node status codes.

        Goes through asyncua's secure channel (request header, token, chunking, signing) with
        only the request body assembled here; the header and type id are encoded by asyncua
        itself. Falls back to asyncua's ``write_attributes`` when its internals are not the
        ones this was written against (asyncua 2.1.0).
        """
        uac = client.uaclient
        if self._fast_send:
            try:
                proto = uac.protocol
                sem = uac._request_semaphore
                observe = uac.observer.observe_request
                proto._setup_request_header  # noqa: B018 - capability checks
                proto._callbackmap  # noqa: B018
                proto._connection.message_to_binary  # noqa: B018
            except AttributeError as exc:
                _log.warning(
                    "%s: asyncua internals differ (%s); using write_attributes", self.name, exc
                )
                self._fast_send = False
        if not self._fast_send:
            return await self._request_slow(client, body)
        request = ua.WriteRequest()  # empty NodesToWrite: asyncua encodes type id and header
        with observe(request):
            async with sem:
                proto = uac.protocol
                if proto is None:
                    raise ConnectionError("Connection is not open")
                if proto.pre_request_hook:
                    await proto.pre_request_hook()
                data = await asyncio.wait_for(
                    _send_encoded(proto, request, body, self.timeout_s), self.timeout_s
                )
                proto.check_answer(data, " in response to WriteRequest")
        return _write_results(data)

    async def _request_slow(self, client: Client, body: bytes) -> np.ndarray:
        request = ua.WriteRequest()
        head = struct_to_binary(request)[:-4]
        parsed = struct_from_binary(ua.WriteRequest, Buffer(head + body))
        nodes = [wv.NodeId for wv in parsed.Parameters.NodesToWrite]
        dvs = [wv.Value for wv in parsed.Parameters.NodesToWrite]
        results = await client.uaclient.write_attributes(nodes, dvs, ua.AttributeIds.Value)
        return np.array([r.value for r in results], dtype=np.uint32)

    # --- the sync loop's fixed output set ---------------------------------------------------
    def prepare_outputs(self, names: Sequence[str]) -> OutputBatch:
        """A fixed, ordered set of ``to_field`` points for :meth:`write_batch`.

        Raises:
            WriteRejected: a name not on this link, not ``to_field``, or not writable here.
        """
        points = []
        for n in names:
            p = self._by_name.get(n)
            if p is None or p.direction != "to_field":
                raise WriteRejected(
                    f"point {n!r}: expected a to_field point carried by link {self.name}"
                )
            why = self._not_writable(p)
            if why:
                raise WriteRejected(f"point {n!r}: {why}")
            points.append(p)
        return OutputBatch(points)

    async def write_batch(
        self, batch: OutputBatch, values: np.ndarray, mask: np.ndarray | None = None
    ) -> int:
        """Write ``values`` (ordered like ``batch.names``) in one request; returns how many went.

        Only entries in ``mask`` (all when None) are considered; of those, a value within its
        point's deadband of the last one sent is skipped unless that was ``interval_s`` or more
        ago (the field never sees a value go stale because the twin was quiet). Values are
        checked before anything is sent.

        Raises:
            OutOfRange: a considered value is NaN/inf or outside its limits; nothing is sent.
            CommsLost, HilTimeout, ProtocolError: as :meth:`write_outputs`.
        """
        vals = np.asarray(values, dtype=float)
        now = self.clock()
        sel = batch.select(vals, mask, now)  # deadband, refresh and limits: raises OutOfRange
        if sel.size == 0:
            return 0
        v = vals[sel]
        client = self._require("write")
        body = self._encode_batch(batch, sel, v)
        await self._write_encoded(client, body, [batch.names[i] for i in sel.tolist()])
        batch.sent(sel, vals, now)
        return int(sel.size)

    def _encode_batch(self, batch: OutputBatch, sel: np.ndarray, v: np.ndarray) -> bytes:
        prefixes = self._prefixes()
        if batch.version != self._prefix_version:
            batch.bind(
                [prefixes.get(n) for n in batch.names], [self._vtype.get(n) for n in batch.names]
            )
            batch.version = self._prefix_version
        if batch.missing:
            p = batch.points[batch.missing[0]]
            self._vtype_checked(p)  # raises for a non-numeric node
            raise ProtocolError("opcua", "BadNodeIdUnknown", "node not resolved", p.name)
        if batch.all_float:
            return batch.encode_floats(sel, v, self._timestamp_bytes())
        items = [(batch.points[i], float(x)) for i, x in zip(sel.tolist(), v.tolist())]
        return self._encode(items)


class OutputBatch(BaseOutputBatch):
    """:class:`hil.links.base.OutputBatch` with the encoded heads of the link's nodes."""

    def __init__(self, points: Sequence[Point]) -> None:
        super().__init__(points)
        self.version = -1
        self.prefix: list[bytes] = []
        self.missing: list[int] = []
        self.all_float = False
        self._heads = np.zeros(0, dtype=np.uint8)
        self._head_len = np.zeros(0, dtype=np.intp)
        self._head_at = np.zeros(0, dtype=np.intp)

    def bind(self, prefixes: Sequence[bytes | None], vtypes: Sequence[Any]) -> None:
        """Take the encoded heads of a (re)connected link."""
        self.missing = [i for i, b in enumerate(prefixes) if b is None]
        self.prefix = [b or b"" for b in prefixes]
        self.all_float = all(vt == ua.VariantType.Float for vt in vtypes)
        lens = np.array([len(b) for b in self.prefix], dtype=np.intp)
        self._heads = np.frombuffer(b"".join(self.prefix), dtype=np.uint8)
        self._head_len = lens
        self._head_at = np.cumsum(lens) - lens

    def encode_floats(self, sel: np.ndarray, v: np.ndarray, tail: bytes) -> bytes:
        """NodesToWrite (Int32 count, then per selected point its head, ``v`` as a Float and
        ``tail``: status and timestamp) assembled with array operations, byte for byte what
        joining the pieces point by point gives."""
        lens = self._head_len[sel]
        size = lens + (4 + len(tail))
        at = 4 + np.cumsum(size) - size  # where each WriteValue starts
        out = np.empty(4 + int(size.sum()), dtype=np.uint8)
        out[:4] = np.frombuffer(_INT32.pack(sel.size), dtype=np.uint8)
        done = np.cumsum(lens) - lens
        k = np.arange(int(lens.sum()))
        out[k + np.repeat(at - done, lens)] = self._heads[
            k + np.repeat(self._head_at[sel] - done, lens)
        ]
        vat = at + lens
        # values are range-checked: no overflow to inf here
        out[vat[:, None] + _FOUR] = v.astype("<f4").view(np.uint8).reshape(-1, 4)
        if tail:
            out[(vat + 4)[:, None] + np.arange(len(tail))] = np.frombuffer(tail, dtype=np.uint8)
        return out.tobytes()


_FOUR = np.arange(4)


def _send_encoded(proto: Any, request: Any, body: bytes, timeout: float) -> asyncio.Future[Any]:
    """asyncua 2.1.0's ``UASocketProtocol._send_request`` with NodesToWrite pre-encoded."""
    if proto.transport is None:
        raise ConnectionError("Connection is not open")
    proto._setup_request_header(request.RequestHeader, timeout)
    next_request_id = proto._request_id + 1
    try:
        # the empty request ends with NodesToWrite's Int32 count 0: replace it by the body
        binreq = struct_to_binary(request)[:-4] + body
        proto.revolve_security_token()
        msg = proto._connection.message_to_binary(
            binreq, message_type=ua.MessageType.SecureMessage, request_id=next_request_id
        )
    except Exception:
        proto._request_handle -= 1
        raise
    proto._request_id = next_request_id
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    proto._callbackmap[next_request_id] = future
    proto.transport.write(msg)
    return future


def _write_results(data: Buffer) -> np.ndarray:
    """The status codes of a WriteResponse (service faults are raised by ``check_answer``)."""
    nodeid_from_binary(data)  # type id
    header = struct_from_binary(ua.ResponseHeader, data)
    header.ServiceResult.check()
    n = _INT32.unpack(data.read(4))[0]
    if n <= 0:
        return np.zeros(0, dtype=np.uint32)
    return np.frombuffer(data.read(4 * n), dtype="<u4").astype(np.uint32)
