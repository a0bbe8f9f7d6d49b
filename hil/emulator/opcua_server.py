"""The emulated substation's OPC UA server: the PointStore as a Substation/Bay/Element tree.

Reads: node values are kept equal to the store by a store listener (set at once, then pushed
through asyncua's ``write_attribute_value`` so subscriptions are notified).

Writes: asyncua checks only the node's access-level bits, the same for every user, which cannot
say "the plant may write measurements, an operator may not". So the server's AttributeService is
replaced by a subclass that sends every client write to one of our point nodes through
``PointStore.write()`` with the session user's role:

- role may not write the point's kind -> BadUserAccessDenied
- NaN, inf or outside the point's limits -> BadOutOfRange
- not a number (or a fraction for an integer node) -> BadTypeMismatch
- unknown node -> BadNodeIdUnknown (asyncua)

Writes to other nodes (the standard address space) go to asyncua's own checks. Users are an
explicit dict ``name -> (password, role)`` (made by code) or ``name -> UserEntry`` (a users file
of password hashes, :mod:`hil.security.users`); an anonymous session gets ``anonymous_role``
(``"viewer"`` by default, ``None`` refuses anonymous sessions). With ``security``
(:class:`hil.security.certs.OpcuaSecurity`) the server offers only its secure policies, checks
client certificates against its trust list, and accepts anonymous sessions only when
``security.insecure``.

Quality -> status code (a value whose quality is not GOOD is never served as Good):

- GOOD -> Good
- STALE -> UncertainLastUsableValue (the last value, not refreshed in time)
- INVALID -> BadWaitingForInitialData when the point never had a value, BadSensorFailure when it
  was marked not available (NaN)
- COMMS_LOST -> BadCommunicationError

Every client write to a point node, accepted or refused, goes to the store's audit log with
peer, user (and client certificate), old and new value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from asyncua.ua.ua_binary import nodeid_to_binary

from hil.address_space import build_point_nodes
from hil.errors import HilError, OutOfRange, WriteRejected
from hil.opcua_common import (
    MAX_CONNECTIONS,
    PasswordUserManager,
    limit_connections,
    new_server,
    peer_of_current_request,
    status_code,
    user_label,
)
from hil.opcua_write import DecodedWrite, install_bulk_write
from hil.security.audit import ACCEPTED, REFUSED, AuditLog, audit_log
from hil.security.certs import OpcuaSecurity
from hil.security.users import UserEntry, plant_not_available
from hil.store import ROLE_WRITES, PointStore
from twin.pointmap import Point
from twin.quality import Quality, Sample

_log = logging.getLogger(__name__)

_VARIANT: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
}
_INTEGER = {
    ua.VariantType.Int16,
    ua.VariantType.UInt16,
    ua.VariantType.Int32,
    ua.VariantType.UInt32,
}
# UN/CEFACT common codes for EUInformation (OPC UA Part 8); -1 when there is none.
_UNECE: dict[str, str] = {
    "MW": "MAW",
    "Mvar": "MAR",
    "MVA": "MVA",
    "kV": "KVT",
    "kA": "B22",
    "%": "P1",
    "s": "SEC",
    "A": "AMP",
    "V": "VLT",
    "Hz": "HTZ",
}
_UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
_MISSING = object()

NAMESPACE_DEFAULT = "urn:gridtwin:substation"


def variant_type(point: Point) -> ua.VariantType:
    """The OPC UA type of a point: from its Modbus dtype, else Boolean for bits, else Double."""
    if point.modbus is not None:
        if point.modbus.table in ("coil", "discrete_input"):
            return ua.VariantType.Boolean
        return _VARIANT[point.modbus.dtype]
    if point.column in ("closed", "cmd"):
        return ua.VariantType.Boolean
    return ua.VariantType.Double


def _eu_information(unit: str) -> ua.EUInformation:
    code = _UNECE.get(unit)
    unit_id = -1
    if code:
        unit_id = 0
        for ch in code:
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=_UNECE_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(unit),
    )


def _to_python(value: float, vtype: ua.VariantType) -> Any:
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in _INTEGER:
        return int(round(value)) if math.isfinite(value) else 0
    return float(value)


#: status code -> its (never mutated) StatusCode; the last source timestamp converted
_STATUS: dict[int, ua.StatusCode] = {}
_LAST_TS: list[Any] = [None, None]


def data_value(sample: Sample, vtype: ua.VariantType) -> ua.DataValue:
    """A store sample as an OPC UA DataValue (quality -> status code, source timestamp)."""
    t = sample.timestamp
    if _LAST_TS[0] == t:  # one step's values share one timestamp: convert it once
        ts = _LAST_TS[1]
    else:
        ts = datetime.fromtimestamp(t, UTC)
        _LAST_TS[0], _LAST_TS[1] = t, ts
    code = status_code(sample)
    sc = _STATUS.get(code)
    if sc is None:
        sc = _STATUS[code] = ua.StatusCode(code)
    return ua.DataValue(
        Value=ua.Variant(_to_python(sample.value, vtype), vtype),
        StatusCode=sc,
        SourceTimestamp=ts,
        ServerTimestamp=datetime.now(UTC),
    )


class OpcuaConfigError(HilError, ValueError):
    """An OPC UA server setting that cannot work (unknown role, ...)."""


class RoleUserManager(PasswordUserManager):
    """Users from an explicit dict ``name -> (password, role)``; anonymous gets one role."""

    _log = _log

    def __init__(
        self,
        users: Mapping[str, tuple[str, str] | UserEntry],
        *,
        anonymous_role: str | None = "viewer",
    ) -> None:
        norm: dict[str, tuple[str | UserEntry, str]] = {}
        for name, entry in users.items():
            if isinstance(entry, UserEntry):
                norm[name] = (entry, entry.role)
            else:
                norm[name] = (entry[0], entry[1])
        for name, (_pw, role) in norm.items():
            if role not in ROLE_WRITES:
                raise OpcuaConfigError(
                    f"user {name!r}: expected a role in {', '.join(ROLE_WRITES)}, found {role!r}"
                )
        if anonymous_role is not None and anonymous_role not in ROLE_WRITES:
            raise OpcuaConfigError(
                f"anonymous role: expected one of {', '.join(ROLE_WRITES)}, "
                f"found {anonymous_role!r}"
            )
        self.users = norm
        self.anonymous_role = anonymous_role

    def _password(self, username: str) -> str | UserEntry | None:
        entry = self.users.get(username)
        return entry[0] if entry else None

    def _anonymous_ok(self) -> bool:
        return self.anonymous_role is not None

    def role_of(self, user: User | None) -> str:
        if user is None or user.name is None:
            return self.anonymous_role or "viewer"
        entry = self.users.get(user.name)
        return entry[1] if entry else "viewer"


class _GuardedAttributeService(AttributeService):
    """asyncua's AttributeService with client writes to point nodes routed through the store."""

    def __init__(self, base: AttributeService, owner: OpcuaServer) -> None:
        super().__init__(base._aspace)
        self._owner = owner

    async def write(
        self, params: ua.WriteParameters, user: User = User(role=UserRole.Admin)
    ) -> list[ua.StatusCode]:
        nodes = params.NodesToWrite
        point_of = self._owner.point_of
        value_attr = ua.AttributeIds.Value
        points = [point_of(wv.NodeId) for wv in nodes]
        if (
            len(nodes) > 1
            and all(p is not None for p in points)
            and all(wv.AttributeId == value_attr for wv in nodes)
            and len({p.name for p in points if p is not None}) == len(points)
        ):
            # the plant's step (every node a point, each once): one bulk update of the store
            pairs = [(p, wv.Value) for p, wv in zip(points, nodes) if p is not None]
            return self._owner.client_write_many(pairs, user)
        results: list[ua.StatusCode] = []
        for wv in nodes:
            point = self._owner.point_of(wv.NodeId)
            if point is None:
                if wv.NodeId not in self._aspace:
                    # asyncua answers BadUserAccessDenied here for non-admin users
                    results.append(ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
                    continue
                one = ua.WriteParameters(NodesToWrite=[wv])
                results.extend(await super().write(one, user=user))
                continue
            if wv.AttributeId != ua.AttributeIds.Value:
                self._owner.audit_refused(point, None, user, "attribute is not Value")
                results.append(ua.StatusCode(ua.StatusCodes.BadUserAccessDenied))
                continue
            results.append(self._owner.client_write(point, wv.Value, user))
        return results


class OpcuaServer:
    """asyncua server over a PointStore; a fresh asyncua Server per start (restartable)."""

    def __init__(
        self,
        store: PointStore,
        *,
        host: str = "127.0.0.1",
        port: int,
        users: Mapping[str, tuple[str, str] | UserEntry] | None = None,
        anonymous_role: str | None = "viewer",
        security_policies: list[ua.SecurityPolicyType] | None = None,
        certificate: str | None = None,
        private_key: str | None = None,
        security: OpcuaSecurity | None = None,
        audit: AuditLog | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.store = store
        self.security = security
        self.max_connections = max_connections
        self.audit = audit if audit is not None else audit_log(store)
        if security is not None and not security.insecure:
            anonymous_role = None  # anonymous sessions exist only with --insecure
        self.host = host
        self.port = port
        self.user_manager = RoleUserManager(users or {}, anonymous_role=anonymous_role)
        self.security_policies = security_policies or [ua.SecurityPolicyType.NoSecurity]
        self.certificate = certificate
        self.private_key = private_key
        self._server: Server | None = None
        self._nodes: dict[ua.NodeId, Point] = {}
        self._node_of: dict[str, ua.NodeId] = {}
        #: point -> its node's Value attribute (set on every store change; filled on first use)
        self._value_attrs: dict[str, Any] = {}
        #: per store position: how many monitored items watch its node's Value (kept by the
        #: address space's add/delete_datachange_callback, wrapped in :meth:`_track_monitors`)
        self._monitors = np.zeros(len(store), dtype=np.int32)
        self._vtype: dict[str, ua.VariantType] = {}
        self._unsubscribe: Any = None
        self._pending: dict[str, None] = {}  # ordered set of point names to push
        self._wake: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        # the point nodes in one order, for Write requests judged as arrays (filled by _build)
        self._index_points: list[Point] = []
        self._key_index: dict[bytes, int] = {}  # binary NodeId -> position
        self._pos: dict[str, int] = {}  # point name -> position
        self._lo = np.zeros(0)
        self._hi = np.zeros(0)
        self._store_pos = np.zeros(0, dtype=np.intp)
        self._int = np.zeros(0, dtype=bool)
        self._may_role: dict[str, np.ndarray] = {}
        #: the last bulk request's key list (a layout's, reused) -> positions and points
        #: recent bulk requests' key lists (a layout's, reused by the decoder) -> positions and
        #: points, by the list's id (a plant alternates a few layouts: its step, its set points)
        self._layouts: dict[int, tuple[list[bytes], list[int], list[Point]]] = {}
        #: Write requests served in bulk (decoded in one pass), and their values
        self.bulk_writes = 0
        self.bulk_values = 0

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"opc.tcp://{host}:{self.port}/gridtwin/"

    @property
    def running(self) -> bool:
        return self._server is not None

    def node_id(self, name: str) -> ua.NodeId:
        """The node id of a point (namespace index as registered on the server)."""
        return self._node_of[name]

    def point_of(self, node_id: ua.NodeId) -> Point | None:
        return self._nodes.get(node_id)

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the address space and listen; raises OSError when the port is taken."""
        if self._server is not None:
            return
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.user_manager.anonymous_role is not None:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server = await new_server(
            endpoint=self.endpoint,
            name="gridtwin emulated substation",
            user_manager=self.user_manager,
            security_policies=self.security_policies,
            identity_tokens=tokens,
            certificate=self.certificate,
            private_key=self.private_key,
            security=self.security,
        )
        await self._build(server)
        server.iserver.attribute_service = _GuardedAttributeService(
            server.iserver.attribute_service, self
        )
        # the plant's Write requests decoded in one pass, judged and stored in bulk
        install_bulk_write(server, self._bulk_write)
        await server.start()
        limit_connections(server, self.max_connections)
        self._server = server
        self._wake = asyncio.Event()
        self._unsubscribe = self.store.subscribe_batch(self._on_batch)
        # the store may have changed while the server started: push those values once
        built: dict[str, Sample] = getattr(self, "_built", {})  # none: push all
        self._pending = dict.fromkeys(
            n for n in self._node_of if self.store.get(n) is not built.get(n)
        )
        self._wake.set()
        self._pump = asyncio.create_task(self._push_loop(), name="gridtwin-opcua-push")
        _log.info("OPC UA server on %s with %d point nodes", self.endpoint, len(self._nodes))

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        # asyncua's stop() waits out the 1 s sleep of its server-time task; end it now instead
        iserver = server.iserver
        time_task = getattr(iserver, "time_task", None)
        if time_task is not None:
            iserver._time_task_stop = True
            time_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await time_task
            iserver.time_task = None
        await server.stop()

    async def _build(self, server: Server) -> None:
        pm = self.store.pointmap
        ns = await server.register_namespace(getattr(pm, "namespace", NAMESPACE_DEFAULT))
        self._nodes.clear()
        self._node_of.clear()
        self._value_attrs.clear()
        self._built: dict[str, Sample] = {}  # the samples the nodes were made from
        self._nodes.update(
            await build_point_nodes(server, ns, self.store, self._node_of, self._vtype, self._built)
        )
        self._index_nodes()
        self._track_monitors(server)

    def _track_monitors(self, server: Server) -> None:
        """Count the monitored items on each point node (asyncua's subscriptions add and delete
        them through these two methods of the address space), and let every unmonitored point
        node read its Value from the store when it is read: a store change then costs nothing
        for a node nobody watches (a step of the plant changes tens of thousands of points)."""
        aspace = server.iserver.aspace
        store = self.store
        self._monitors = count = np.zeros(len(store), dtype=np.int32)
        pos_of = {nid: store.position(p.name) for nid, p in self._nodes.items()}
        names = store.names
        handles: dict[int, int] = {}
        add, delete = aspace.add_datachange_callback, aspace.delete_datachange_callback
        attrs = self._value_attrs
        read = self._read_value
        for nid, p in self._nodes.items():
            node = aspace.get(nid)
            if node is not None:
                av = attrs[p.name] = node.attributes[ua.AttributeIds.Value]
                av.value_callback = read

        def add_callback(
            nodeid: ua.NodeId, attr: ua.AttributeIds, callback: Callable[..., Any]
        ) -> tuple[ua.StatusCode, int]:
            status, handle = add(nodeid, attr, callback)
            i = pos_of.get(nodeid)
            if i is not None and attr == ua.AttributeIds.Value and status.is_good():
                handles[handle] = i
                count[i] += 1
            return status, handle

        def delete_callback(handle: int) -> None:
            delete(handle)
            i = handles.pop(handle, None)
            if i is not None:
                count[i] -= 1
                if count[i] == 0:  # nobody watches it any more: reads follow the store again
                    av = attrs.get(names[i])
                    if av is not None:
                        av.value_callback = read

        aspace.add_datachange_callback = add_callback  # type: ignore[method-assign]
        aspace.delete_datachange_callback = delete_callback  # type: ignore[method-assign]

    def _read_value(self, nodeid: ua.NodeId, attr: ua.AttributeIds) -> ua.DataValue:
        """An unmonitored point node's Value, read from the store at read time (asyncua's value
        callback, one for every such node)."""
        name = self._nodes[nodeid].name
        return data_value(self.store.get(name), self._vtype[name])

    def _index_nodes(self) -> None:
        """The point nodes in one order: binary node ids, limits, integer types per position."""
        pts = list(self._nodes.items())
        self._index_points = [p for _nid, p in pts]
        self._key_index = {nodeid_to_binary(nid): i for i, (nid, _p) in enumerate(pts)}
        self._pos = {p.name: i for i, p in enumerate(self._index_points)}
        #: node order -> store position
        self._store_pos = self.store.positions(p.name for p in self._index_points)
        inf = math.inf
        self._lo = np.array([-inf if p.low is None else p.low for p in self._index_points], float)
        self._hi = np.array([inf if p.high is None else p.high for p in self._index_points], float)
        self._int = np.array(
            [self._vtype[p.name] in _INTEGER for p in self._index_points], dtype=bool
        )
        self._may_role = {}
        self._layouts = {}

    # store -> nodes ---------------------------------------------------------------------------
    def _on_batch(self, positions: np.ndarray, source: str) -> None:
        """A store write (a batch or one point): only the nodes a subscription monitors are
        touched; every other point node reads the store when it is read."""
        if self._server is None:
            return
        count = self._monitors
        if count.size == 0:
            return
        watched = positions[count[positions] > 0]
        if watched.size == 0:
            return
        names = self.store.names
        attrs = self._value_attrs
        get = self.store.get
        vtype = self._vtype
        pending = self._pending
        for i in watched.tolist():
            name = names[i]
            attr = attrs.get(name)
            if attr is None:
                continue
            # monitored: set at once so a read right after a Modbus write sees it ...
            attr.value = data_value(get(name), vtype[name])
            attr.value_callback = None
            # ... and let the pump notify subscriptions (asyncua's callbacks are async)
            pending[name] = None
        if self._wake is not None:
            self._wake.set()

    async def _push_loop(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._pending = list(self._pending), {}
            server = self._server
            if server is None:
                return
            attrs = self._value_attrs
            for name in names:
                attr = attrs.get(name)
                if attr is not None and not attr.datachange_callbacks:
                    continue  # nobody monitors it any more: its reads follow the store
                nid = self._node_of[name]
                dv = data_value(self.store.get(name), self._vtype[name])
                try:
                    await server.write_attribute_value(nid, dv)
                except Exception:  # keep serving; one bad node must not stop the pump
                    _log.exception("OPC UA: could not update node %s", nid)

    # client -> store --------------------------------------------------------------------------
    def client_write(self, point: Point, dv: ua.DataValue, user: User) -> ua.StatusCode:
        """Apply one client write to the store with the user's role; returns the status."""
        role = self.user_manager.role_of(user)
        return self._client_write(point, dv, user, role)

    def client_write_many(
        self, writes: Sequence[tuple[Point, ua.DataValue]], user: User
    ) -> list[ua.StatusCode]:
        """Apply one Write request's values (distinct points, decoded by asyncua) in bulk:
        :meth:`_apply_many`, status codes as asyncua's objects."""
        raws: list[Any] = []
        bads: list[bool] = []
        stamps: list[float | None] = []
        for _p, dv in writes:
            variant = dv.Value
            raws.append(variant.Value if variant is not None else None)
            bads.append(dv.StatusCode is not None and dv.StatusCode.is_bad())
            stamps.append(_posix(dv.SourceTimestamp))
        codes = self._apply_many([p for p, _ in writes], raws, bads, stamps, user)
        return [ua.StatusCode(c) for c in codes]

    def _bulk_write(self, decoded: DecodedWrite, user: User | None) -> list[int] | None:
        """A Write request decoded in one pass (:mod:`hil.opcua_write`): every node one of
        our point nodes, each once, else None (asyncua's path, node by node)."""
        keys = decoded.keys
        cached = self._layouts.get(id(keys))
        if cached is not None and cached[0] is keys:  # the same layout's key list
            idx, points = cached[1], cached[2]
        else:
            index = self._key_index
            try:
                idx = [index[k] for k in keys]
            except KeyError:
                return None
            if len(idx) < 2 or len(set(idx)) != len(idx):
                return None
            pts = self._index_points
            points = [pts[i] for i in idx]
            if len(self._layouts) >= _LAYOUTS:
                self._layouts.clear()
            self._layouts[id(keys)] = (keys, idx, points)  # holds keys: its id stays its own
        n = len(idx)
        ticks = decoded.ticks
        stamps: list[float | None]
        if ticks.count(ticks[0]) == n:  # one step's values share one timestamp
            t0 = ticks[0]
            stamps = [None if t0 is None else _posix(ua.win_epoch_to_datetime(t0))] * n
        else:
            stamps = []
            last: Any = _MISSING
            posix: float | None = None
            for t in ticks:
                if t != last:
                    last = t
                    posix = None if t is None else _posix(ua.win_epoch_to_datetime(t))
                stamps.append(posix)
        statuses = decoded.statuses
        if statuses.count(0) == n:
            bads = [False] * n
        else:
            bads = [bool(c & 0x80000000) for c in statuses]
        codes = self._apply_many(
            points, decoded.values, bads, stamps, user or User(), idx, numeric=True
        )
        self.bulk_writes += 1
        self.bulk_values += len(idx)
        return codes

    def _apply_many(
        self,
        points: Sequence[Point],
        raws: Sequence[Any],
        bads: Sequence[bool],
        stamps: Sequence[float | None],
        user: User,
        idx: Sequence[int] | None = None,
        *,
        numeric: bool = False,
    ) -> list[int]:
        """Apply one Write request's values (distinct points) to the store in bulk.

        Each value is judged as :meth:`client_write` judges it (role, type, limits, the plant's
        "not available"; the common case as array operations, anything else value by value);
        the accepted ones go into the store with one ``set_many`` per run of equal source
        timestamps (the twin sends one per request), in request order. The audit gets one group
        record per run of accepted values with one reason (normally one for the request) and
        one record per refused value, in request order, ``old`` being the value before the
        request. Returns the status codes. ``idx``: the points' positions in node order;
        ``numeric``: every raw value is a bool, int or float (the one-pass decoder's).
        """
        role = self.user_manager.role_of(user)
        who = user_label(user)
        peer = peer_of_current_request()
        store = self.store
        get = store.get
        names = [p.name for p in points]
        if idx is None:
            olds = [get(nm).value for nm in names]
        else:  # the values before the request, from the store's arrays (NaN as get() has it)
            nan = math.nan
            olds = [nan if x != x else x for x in store.values[self._store_pos[idx]].tolist()]
        n = len(names)
        good = ua.StatusCodes.Good
        verdicts: list[tuple[int, float | None, str, float | None, bool] | None] = [None] * n
        vals: list[float] = []
        if role in ROLE_WRITES and (numeric or all(type(r) in (float, int, bool) for r in raws)):
            if idx is None:
                pos = self._pos
                idx = [pos[nm] for nm in names]
            ix = np.asarray(idx, dtype=np.intp)
            v = np.asarray(raws, dtype=float)
            v[np.asarray(bads, dtype=bool)] = math.nan
            finite = np.isfinite(v)
            with np.errstate(invalid="ignore"):
                ok = (
                    finite
                    & self._may(role)[ix]
                    & (v >= self._lo[ix])
                    & (v <= self._hi[ix])
                    & ~(self._int[ix] & (v != np.trunc(np.where(finite, v, 0.0))))
                )
            vals = v.tolist()
            if n > 1 and ok.all() and stamps.count(stamps[0]) == n:
                # the plant's step: every value accepted, one source timestamp
                store.set_array(self._store_pos[ix], v, source="opcua", timestamp=stamps[0])
                self.audit.record_many(protocol="opcua", peer=peer, user=who, points=names,
                                       olds=olds, news=vals, result=ACCEPTED,
                                       role=role)  # fmt: skip
                return [good] * n
            for i in np.flatnonzero(~ok).tolist():
                verdicts[i] = self._judge_raw(points[i], raws[i], bads[i], stamps[i], role)
        else:
            verdicts = [
                self._judge_raw(p, r, b, t, role) for p, r, b, t in zip(points, raws, bads, stamps)
            ]
            vals = [math.nan if vd is None or vd[1] is None else vd[1] for vd in verdicts]
        # runs of plain sets with one source timestamp each; a "not available" one on its own
        runs: list[tuple[float | None, list[tuple[str, float]], bool]] = []
        for i in range(n):
            vd = verdicts[i]
            if vd is None:
                ts, na, value = stamps[i], False, vals[i]
            else:
                status, val, _reason, ts, na = vd
                if status != good or val is None:
                    continue
                value = val
            if na or not runs or runs[-1][2] or runs[-1][0] != ts:
                runs.append((ts, [], na))
            runs[-1][1].append((names[i], value))
        for ts, items, na in runs:
            if na:
                store.set(items[0][0], math.nan, quality=Quality.INVALID, timestamp=ts,
                          source="opcua")  # fmt: skip
            else:
                store.set_many(items, source="opcua", timestamp=ts)
        # the audit: a group per run of accepted values with one reason, refused ones singly
        audit = self.audit
        codes: list[int] = []
        group: list[int] = []
        group_reason = ""

        def flush() -> None:
            if not group:
                return
            if len(group) == 1:
                i = group[0]
                audit.record(protocol="opcua", peer=peer, user=who, point=names[i],
                             old=olds[i], new=_new(i), result=ACCEPTED, reason=group_reason,
                             role=role)  # fmt: skip
            else:
                audit.record_many(protocol="opcua", peer=peer, user=who,
                                  points=[names[i] for i in group],
                                  olds=[olds[i] for i in group], news=[_new(i) for i in group],
                                  result=ACCEPTED, reason=group_reason, role=role)  # fmt: skip
            group.clear()

        def _new(i: int) -> float | None:
            vd = verdicts[i]
            return vals[i] if vd is None else vd[1]

        for i in range(n):
            vd = verdicts[i]
            status, reason = (good, "") if vd is None else (vd[0], vd[2])
            codes.append(status)
            if status == good:
                if group and reason != group_reason:
                    flush()
                group_reason = reason
                group.append(i)
                continue
            flush()
            audit.record(protocol="opcua", peer=peer, user=who, point=names[i], old=olds[i],
                         new=_new(i), result=REFUSED, reason=reason, role=role)  # fmt: skip
        flush()
        return codes

    def _may(self, role: str) -> np.ndarray:
        """Per point (node order): whether ``role`` may write its kind."""
        may = self._may_role.get(role)
        if may is None:
            allowed = ROLE_WRITES[role]
            may = self._may_role[role] = np.array(
                [p.kind in allowed for p in self._index_points], dtype=bool
            )
        return may

    def _judge(
        self, point: Point, dv: ua.DataValue, role: str
    ) -> tuple[int, float | None, str, float | None, bool]:
        """What :meth:`_client_write` would do with ``dv``, without doing it."""
        variant = dv.Value
        return self._judge_raw(
            point,
            variant.Value if variant is not None else None,
            dv.StatusCode is not None and dv.StatusCode.is_bad(),
            _posix(dv.SourceTimestamp),
            role,
        )

    def _judge_raw(
        self, point: Point, raw: Any, bad_status: bool, timestamp: float | None, role: str
    ) -> tuple[int, float | None, str, float | None, bool]:
        """(status, the value for the audit, reason, source timestamp, whether it is the
        plant's "not available") of a written value ``raw`` (a bad DataValue status: no value).
        """
        if bad_status:
            value = math.nan
        elif isinstance(raw, bool):
            value = 1.0 if raw else 0.0
        elif isinstance(raw, (int, float)):
            value = float(raw)
        else:
            return ua.StatusCodes.BadTypeMismatch, None, f"not a number: {raw!r}", timestamp, False
        if self._vtype[point.name] in _INTEGER and math.isfinite(value) and value != int(value):
            return (
                ua.StatusCodes.BadTypeMismatch,
                value,
                "a fraction for an integer",
                timestamp,
                False,
            )
        if math.isnan(value) and plant_not_available(point, role):
            return ua.StatusCodes.Good, value, "not available", timestamp, True
        try:
            self.store.check_write(point.name, value, role=role)
        except WriteRejected as exc:
            return ua.StatusCodes.BadUserAccessDenied, value, str(exc), timestamp, False
        except OutOfRange as exc:
            return ua.StatusCodes.BadOutOfRange, value, str(exc), timestamp, False
        return ua.StatusCodes.Good, value, "", timestamp, False

    def audit_refused(self, point: Point, new: float | None, user: User, reason: str) -> None:
        self.audit.record(protocol="opcua", peer=peer_of_current_request(),
                          user=user_label(user), point=point.name,
                          old=self.store.value(point.name), new=new, result=REFUSED,
                          reason=reason, role=self.user_manager.role_of(user))  # fmt: skip

    def _client_write(self, point: Point, dv: ua.DataValue, user: User, role: str) -> ua.StatusCode:
        old = self.store.value(point.name)
        who = user_label(user)
        peer = peer_of_current_request()

        def done(status: int, new: float | None, reason: str = "") -> ua.StatusCode:
            ok = status == ua.StatusCodes.Good
            self.audit.record(protocol="opcua", peer=peer, user=who, point=point.name, old=old,
                              new=new, result=ACCEPTED if ok else REFUSED,
                              reason=reason, role=role)  # fmt: skip
            return ua.StatusCode(status)

        timestamp = _posix(dv.SourceTimestamp)
        bad_status = dv.StatusCode is not None and dv.StatusCode.is_bad()
        variant = dv.Value
        raw = variant.Value if variant is not None else None
        if bad_status:
            value = math.nan  # "no value": only the plant may say that (see below)
        elif isinstance(raw, bool):
            value = 1.0 if raw else 0.0
        elif isinstance(raw, (int, float)):
            value = float(raw)
        else:
            return done(ua.StatusCodes.BadTypeMismatch, None, f"not a number: {raw!r}")
        if self._vtype[point.name] in _INTEGER and math.isfinite(value) and value != int(value):
            return done(ua.StatusCodes.BadTypeMismatch, value, "a fraction for an integer")
        if math.isnan(value) and plant_not_available(point, role):
            # the twin marks a measurement it cannot compute (isolated bus): INVALID, not refused
            self.store.set(
                point.name, math.nan, quality=Quality.INVALID, timestamp=timestamp, source="opcua"
            )
            return done(ua.StatusCodes.Good, value, "not available")
        try:
            self.store.check_write(point.name, value, role=role)
        except WriteRejected as exc:
            return done(ua.StatusCodes.BadUserAccessDenied, value, str(exc))
        except OutOfRange as exc:
            return done(ua.StatusCodes.BadOutOfRange, value, str(exc))
        self.store.set(point.name, value, timestamp=timestamp, source="opcua")
        return done(ua.StatusCodes.Good, value)


#: request layouts an emulator OPC UA server keeps resolved
_LAYOUTS = 16


def _posix(ts: datetime | None) -> float | None:
    """A client's SourceTimestamp as POSIX seconds (asyncua decodes naive UTC)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()
