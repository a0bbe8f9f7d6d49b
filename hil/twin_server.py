"""The twin's own OPC UA server: live state for SCADA and HMIs, read-only.

Address space (namespace ``urn:gridtwin:twin``, string node ids = the browse path joined by
``/`` under ``Objects``)::

    Twin/Buses/<label>/{vm_pu, va_degree}
    Twin/Lines/<label>/{p_from_mw, q_from_mvar, i_ka, loading_percent}
    Twin/Trafos/<label>/{p_hv_mw, q_hv_mvar, loading_percent}
    Twin/Points/<point name>/{Value, Quality, Divergence}
    Twin/Alarms/{ActiveCount, Active, Last}
    Twin/Stats/{Time_s, Steps, Converged, Iterations, DeadlineMisses, NotConverged,
                StepP50Ms, StepP99Ms, SolveP99Ms, LastStepMs, PublishMs}

Safe defaults (asyncua's are not, see FIELD-NOTES): binds 127.0.0.1, NoSecurity only (loopback),
Anonymous only, an explicit user manager that never grants Admin, and no writable node at all.
NoSecurity on an address that is not loopback is refused unless ``insecure=True``. With
``security`` (:class:`hil.security.certs.OpcuaSecurity`, e.g. ``OpcuaSecurity.from_pki(...)``)
the server offers only Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss in Sign
and SignAndEncrypt, checks client certificates against the trust list (unknown:
BadCertificateUntrusted), and accepts UserName logins from ``users`` (plain passwords made by
code or ``UserEntry`` hashes from a users file) and anonymous sessions only if
``security.insecure``. Every write attempt (all are refused: nothing is writable) goes to
``audit``.
Values are updated once per step, server-side, straight into the address space (no client round
trip, no per-node service call). Element results are written only when they changed, and at least
every ``refresh_s`` (so a SourceTimestamp never gets older than that); the stats' percentiles are
recomputed at most every ``stats_interval_s``. ``attach(loop, background=True)`` publishes after
the step instead of inside it, skipping a step while the previous publication still runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import Server, ua

from hil.address_space import BulkBuilder, Variable
from hil.errors import HilError
from hil.opcua_common import (
    PasswordUserManager,
    limit_connections,
    new_server,
    peer_of_current_request,
    status_code,
    user_label,
)
from hil.security.audit import ACCEPTED, REFUSED, AuditLog
from hil.security.certs import OpcuaSecurity
from hil.security.users import UserEntry

_log = logging.getLogger(__name__)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)

NAMESPACE = "urn:gridtwin:twin"

#: Result columns published per table: (folder, table, columns).
ELEMENT_FOLDERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Buses", "bus", ("vm_pu", "va_degree")),
    ("Lines", "line", ("p_from_mw", "q_from_mvar", "i_ka", "loading_percent")),
    ("Trafos", "trafo", ("p_hv_mw", "q_hv_mvar", "loading_percent")),
)
STATS: tuple[tuple[str, ua.VariantType], ...] = (
    ("Time_s", ua.VariantType.Double),
    ("Steps", ua.VariantType.Int64),
    ("Converged", ua.VariantType.Boolean),
    ("Iterations", ua.VariantType.Int32),
    ("DeadlineMisses", ua.VariantType.Int64),
    ("NotConverged", ua.VariantType.Int64),
    ("StepP50Ms", ua.VariantType.Double),
    ("StepP99Ms", ua.VariantType.Double),
    ("SolveP99Ms", ua.VariantType.Double),
    ("LastStepMs", ua.VariantType.Double),
    ("PublishMs", ua.VariantType.Double),
)


class ReadOnlyUserManager(PasswordUserManager):
    """Anonymous (when allowed) and the given users, all as plain ``UserRole.User``.

    Never ``UserRole.Admin``: that would bypass asyncua's access checks. Since no node of the
    twin server is writable, every session can only browse, read and subscribe.
    """

    server_label = "twin OPC UA"
    _log = _log

    def __init__(
        self, users: Mapping[str, str | UserEntry] | None = None, *, anonymous: bool = True
    ) -> None:
        self.users = dict(users or {})
        self.anonymous = anonymous

    def _password(self, username: str) -> str | UserEntry | None:
        return self.users.get(username)

    def _anonymous_ok(self) -> bool:
        return self.anonymous


class TwinServer:
    """The twin's read-only OPC UA server.

    Args:
        net: the model's pandapower net (element labels and table order).
        pointmap: a PointMap or an iterable of Points whose value, quality and divergence are
            published (None: none). Inputs show the sample read, outputs the value written.
        host, port: bind address (loopback by default); port 0 picks a free port once.
        security_policies: asyncua policies; NoSecurity by default, meant for loopback only.
        users: ``name -> password`` for UserName logins (none by default).
        anonymous: whether anonymous sessions are accepted.
        certificate, private_key: server certificate files, needed for signed policies.
        refresh_s: an unchanged element value is written again after this long (None: never).
        stats_interval_s: how often the step-time percentiles under Stats are recomputed.

    Use ``async with TwinServer(...) as srv: loop.listeners.append(srv.publish)`` (or
    :meth:`attach`).
    """

    def __init__(
        self,
        net: Any,
        pointmap: Any = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        security_policies: Sequence[ua.SecurityPolicyType] = (ua.SecurityPolicyType.NoSecurity,),
        users: Mapping[str, str | UserEntry] | None = None,
        anonymous: bool = True,
        certificate: str | None = None,
        private_key: str | None = None,
        security: OpcuaSecurity | None = None,
        insecure: bool = False,
        audit: AuditLog | None = None,
        namespace: str = NAMESPACE,
        refresh_s: float | None = 1.0,
        stats_interval_s: float = 1.0,
    ) -> None:
        self.net = net
        self.refresh_s = refresh_s
        self.stats_interval_s = float(stats_interval_s)
        if pointmap is None:
            self.points: tuple[Any, ...] = ()
        else:
            self.points = tuple(getattr(pointmap, "points", pointmap))
        self.host = host
        self._port = int(port)
        self.security = security
        self.audit = audit if audit is not None else AuditLog()
        if security is not None:
            self.security_policies = security.all_policies()
            anonymous = anonymous and security.insecure
        else:
            self.security_policies = list(security_policies)
        self.user_manager = ReadOnlyUserManager(users, anonymous=anonymous)
        self.certificate = certificate
        self.private_key = private_key
        self.namespace = namespace
        self.ns = 0
        self._server: Server | None = None
        self._vars: dict[str, ua.NodeId] = {}
        self._elem: list[tuple[str, str, list[ua.NodeId]]] = []  # (table, column, per row)
        self._points: list[tuple[str, ua.NodeId, ua.NodeId, ua.NodeId]] = []
        self._attvals: dict[ua.NodeId, Any] = {}
        #: unmonitored nodes: their last published (value, type, status, time) and readers
        self._raw: dict[ua.NodeId, tuple[Any, ua.VariantType, ua.StatusCode, datetime]] = {}
        self._readers: dict[ua.NodeId, Any] = {}
        self.publish_count = 0
        self.last_publish_s = math.nan
        #: background publications skipped because the previous one still ran
        self.publish_skipped = 0
        #: duration (s) of every publication, newest last (bounded)
        self.publish_durations: list[float] = []
        self._last: list[tuple[np.ndarray, np.ndarray] | None] = []  # per _elem: values, times
        self._percentiles: dict[str, float] = {}
        self._percentiles_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        if ua.SecurityPolicyType.NoSecurity in self.security_policies and host not in (
            "127.0.0.1",
            "localhost",
            "::1",
        ):
            if not (insecure or (security is not None and security.insecure)):
                raise HilError(
                    f"twin OPC UA server: NoSecurity on {host}, which is not loopback: expected "
                    "security=OpcuaSecurity(...) or insecure=True"
                )
            _log.warning("twin OPC UA server offers NoSecurity on %s, which is not loopback", host)

    # --- lifecycle --------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self._port}/gridtwin/twin/"

    @property
    def running(self) -> bool:
        return self._server is not None

    def node_id(self, path: str) -> str:
        """The node id string of a published variable, e.g. ``"Twin/Buses/bus1/vm_pu"``."""
        try:
            return self._vars[path].to_string()
        except KeyError:
            raise HilError(f"twin server: no published variable {path!r}") from None

    async def start(self) -> None:
        """Build the address space and listen. Raises OSError when the port is taken."""
        if self._server is not None:
            return
        if self._port == 0:
            # asyncua advertises its endpoint URL before binding: pick the port first
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((self.host, 0))
                self._port = int(s.getsockname()[1])
        ids = (["Anonymous"] if self.user_manager.anonymous else []) + (
            ["Username"] if self.user_manager.users else []
        )
        tokens = {"Anonymous": ua.AnonymousIdentityToken, "Username": ua.UserNameIdentityToken}
        server = await new_server(
            endpoint=self.endpoint,
            name="gridtwin twin",
            user_manager=self.user_manager,
            security_policies=self.security_policies,
            identity_tokens=[tokens[i] for i in ids or ["Username"]],
            certificate=self.certificate,
            private_key=self.private_key,
            security=self.security,
        )
        self.ns = await server.register_namespace(self.namespace)
        self._audit_writes(server)
        await self._build(server)
        await server.start()
        limit_connections(server)
        self._server = server
        self._cache_attribute_values(server)
        _log.info("twin OPC UA server on %s with %d variables", self.endpoint, len(self._vars))

    def _audit_writes(self, server: Server) -> None:
        """Every client write to the twin server is refused (nothing is writable): audit it."""
        iserver = server.iserver
        service = iserver.attribute_service
        write = service.write
        audit = self.audit

        async def audited_write(params: ua.WriteParameters, user: Any = None) -> Any:
            results = await (write(params, user=user) if user is not None else write(params))
            peer = peer_of_current_request()
            if peer:  # a client's request, not the server writing its own nodes
                for wv, status in zip(params.NodesToWrite, results, strict=False):
                    audit.record(protocol="opcua-twin", peer=peer, user=user_label(user),
                                 point=wv.NodeId.to_string(), old=None, new=_num(wv.Value),
                                 result=ACCEPTED if status.is_good() else REFUSED,
                                 reason=status.name)  # fmt: skip
            return results

        service.write = audited_write  # type: ignore[method-assign]

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            await asyncio.wait([task])
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> TwinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def attach(self, loop: Any, *, background: bool = False) -> None:
        """Publish after every step of ``loop`` (a ``hil.sync.SyncLoop``).

        With ``background`` the publication runs as a task after the step (the step's publish
        phase only starts it); a step whose previous publication still runs is not published
        (``publish_skipped``), the next one carries its changes.
        """
        loop.listeners.append(self.publish_soon if background else self.publish)

    def publish_soon(self, loop: Any, report: Any, solution: Any) -> None:
        """Start :meth:`publish` as a task unless the previous one still runs."""
        if self._task is not None and not self._task.done():
            self.publish_skipped += 1
            return
        self._task = asyncio.get_running_loop().create_task(
            self._publish_logged(loop, report, solution), name="twin server publish"
        )

    async def _publish_logged(self, loop: Any, report: Any, solution: Any) -> None:
        try:
            await self.publish(loop, report, solution)
        except Exception:  # a publication must not end the task with an unseen error
            _log.exception("twin server: publication failed")

    # --- address space ----------------------------------------------------------------------
    async def _folder(self, parent: Any, path: str, name: str) -> Any:
        return await parent.add_folder(ua.NodeId(path, self.ns), ua.QualifiedName(name, self.ns))

    async def _build(self, server: Server) -> None:
        """Every published variable in one bulk build (``hil.address_space``).

        Node ids are the logical paths (``Twin/Buses/<label>/vm_pu``); a folder with more than
        ``DEFAULT_MAX_CHILDREN`` children (Buses, Lines, Points of a large grid) browses
        through range folders in between (see docs/opcua-address-space.md).
        """
        self._vars.clear()
        self._elem.clear()
        self._points.clear()
        self._last = []
        root = await self._folder(server.nodes.objects, "Twin", "Twin")
        b = BulkBuilder(server, self.ns, root=root.nodeid, folder_kind="folder", id_prefix="Twin/")
        dbl = ua.VariantType.Double
        empty: dict[Any, ua.DataValue] = {}

        def var(
            path: tuple[str, ...], value: Any, vt: ua.VariantType, group: str = ""
        ) -> ua.NodeId:
            key = "Twin/" + "/".join(path)
            nid = ua.NodeId(key, self.ns)
            dv = empty.get((vt, type(value)))
            if dv is None:  # the initial values are the same everywhere: shared
                dv = empty[(vt, type(value))] = ua.DataValue(ua.Variant(value, vt))
            b.add(Variable(path=path, node_id=nid, value=dv, vtype=vt, group=group))
            self._vars[key] = nid
            return nid

        for folder, table, columns in ELEMENT_FOLDERS:
            df = self.net[table] if table in self.net else None
            if df is None or not len(df):
                continue
            labels = _labels(df, table, self.net)
            per_col: dict[str, list[ua.NodeId]] = {c: [] for c in columns}
            for label in labels:
                for col in columns:
                    per_col[col].append(var((folder, label, col), math.nan, dbl))
            for col in columns:
                self._elem.append((table, col, per_col[col]))
                self._last.append(None)
        for p in self.points or ():
            self._points.append(
                (
                    p.name,
                    var(("Points", p.name, "Value"), math.nan, dbl, p.table),
                    var(("Points", p.name, "Quality"), "", ua.VariantType.String, p.table),
                    var(("Points", p.name, "Divergence"), math.nan, dbl, p.table),
                )
            )
        var(("Alarms", "ActiveCount"), 0, ua.VariantType.Int32)
        var(("Alarms", "Active"), [], ua.VariantType.String)
        var(("Alarms", "Last"), "", ua.VariantType.String)
        for name, vt in STATS:
            init: Any = False if vt == ua.VariantType.Boolean else (0 if vt != dbl else math.nan)
            var(("Stats", name), init, vt)
        await b.build()

    # --- per-step update ----------------------------------------------------------------------
    async def publish(self, loop: Any, report: Any, solution: Any) -> None:
        """Write the step's state into the address space (a ``SyncLoop`` listener)."""
        if self._server is None:
            return
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        # (node, value, variant type, status): DataValues are made only for monitored nodes
        writes: list[tuple[ua.NodeId, Any, ua.VariantType, ua.StatusCode]] = []
        dbl = ua.VariantType.Double
        good = _GOOD

        if solution is not None and getattr(report, "converged", False):
            wall = time.monotonic()
            refresh = self.refresh_s
            for i, (table, col, nodes) in enumerate(self._elem):
                try:
                    arr = np.asarray(solution.get(table, col), dtype=float)
                except (KeyError, AttributeError) as exc:
                    _log.debug("twin server: no result %s.%s: %s", table, col, exc)
                    continue
                last = self._last[i]
                if last is None or last[0].shape != arr.shape:
                    idx = np.arange(arr.shape[0])
                    last = self._last[i] = (arr.copy(), np.full(arr.shape[0], wall))
                else:
                    old, at = last
                    send = ~((arr == old) | (np.isnan(arr) & np.isnan(old)))
                    if refresh is not None:
                        send |= wall - at >= refresh
                    idx = np.flatnonzero(send)
                    old[idx] = arr[idx]
                    at[idx] = wall
                writes.extend(
                    (nodes[j], v, dbl, good) for j, v in zip(idx.tolist(), arr[idx].tolist())
                )
        samples = getattr(loop, "samples", {})
        outputs = getattr(loop, "outputs", {})
        divs = {d.point: d.difference for d in getattr(report, "divergences", ())}
        down_any = any(not getattr(lk, "connected", True) for lk in getattr(loop, "links", ()))
        for name, v_nid, q_nid, d_nid in self._points:
            s = samples.get(name)
            if s is not None:
                status = good if s.quality.is_good else ua.StatusCode(status_code(s))
                writes.append((v_nid, float(s.value), dbl, status))
                writes.append((q_nid, s.quality.value, ua.VariantType.String, good))
            elif name in outputs:
                # a computed value the field link that carries it cannot take is not Good
                # here either (issue 11): the field is serving it STALE by now
                if down_any and self._link_down(loop, name):
                    status = ua.StatusCode(ua.StatusCodes.BadCommunicationError)
                    writes.append((v_nid, float(outputs[name]), dbl, status))
                    writes.append((q_nid, "comms_lost", ua.VariantType.String, good))
                else:
                    writes.append((v_nid, float(outputs[name]), dbl, good))
                    writes.append((q_nid, "good", ua.VariantType.String, good))
            if name in divs:
                writes.append((d_nid, float(divs[name]), dbl, good))
        active = list(getattr(loop, "active_alarms", {}).values())
        v = self._vars
        writes.append((v["Twin/Alarms/ActiveCount"], len(active), ua.VariantType.Int32, good))
        writes.append(
            (v["Twin/Alarms/Active"], [a.message for a in active], ua.VariantType.String, good)
        )
        alarms = getattr(loop, "alarms", ())
        if alarms:
            writes.append((v["Twin/Alarms/Last"], alarms[-1].message, ua.VariantType.String, good))
        # counters every step; the percentiles (sorting the whole history) now and then
        if hasattr(loop, "counters"):
            st = loop.counters()
        else:
            st = loop.stats() if hasattr(loop, "stats") else {}
        mono = time.monotonic()
        if hasattr(loop, "stats") and mono - self._percentiles_at >= self.stats_interval_s:
            full = st if "step" in st else loop.stats()
            self._percentiles = {
                "StepP50Ms": float(full.get("step", {}).get("p50_ms", math.nan)),
                "StepP99Ms": float(full.get("step", {}).get("p99_ms", math.nan)),
                "SolveP99Ms": float(
                    full.get("phases", {}).get("solve", {}).get("p99_ms", math.nan)
                ),
            }
            self._percentiles_at = mono
        pct = self._percentiles
        stat_values: dict[str, Any] = {
            "Time_s": float(getattr(report, "t", math.nan)),
            "Steps": int(st.get("steps", 0)),
            "Converged": bool(getattr(report, "converged", False)),
            "Iterations": int(getattr(report, "iterations", 0)),
            "DeadlineMisses": int(st.get("misses", 0)),
            "NotConverged": int(st.get("not_converged", 0)),
            "StepP50Ms": pct.get("StepP50Ms", math.nan),
            "StepP99Ms": pct.get("StepP99Ms", math.nan),
            "SolveP99Ms": pct.get("SolveP99Ms", math.nan),
            "LastStepMs": float(sum(getattr(report, "durations", {}).values()) * 1e3),
            "PublishMs": float(self.last_publish_s * 1e3),
        }
        for name, vt in STATS:
            writes.append((v[f"Twin/Stats/{name}"], stat_values[name], vt, good))
        monitored = self._publish_values(writes, now)
        if monitored:
            await self.write_batch(monitored)
        self.publish_count += 1
        self.last_publish_s = time.perf_counter() - t0
        self.publish_durations.append(self.last_publish_s)
        if len(self.publish_durations) > 8192:
            del self.publish_durations[:4096]

    def _publish_values(
        self, items: Sequence[tuple[ua.NodeId, Any, ua.VariantType, ua.StatusCode]], now: datetime
    ) -> list[tuple[ua.NodeId, ua.DataValue]]:
        """Set published values; a DataValue is built at once only for a monitored node (its
        subscriptions are notified), an unmonitored one builds it when it is read (asyncua's
        value callback): most of the twin's variables have no subscriber, and a DataValue
        costs ~15 us. Returns the monitored (and uncached) ones for :meth:`write_batch`."""
        assert self._server is not None
        cache = self._attvals
        raw = self._raw
        readers = self._readers
        pending: list[tuple[ua.NodeId, ua.DataValue]] = []
        for nid, value, vt, status in items:
            av = cache.get(nid)
            if av is None or av.value_setter is not None or av.datachange_callbacks:
                dv = ua.DataValue(Value=ua.Variant(value, vt), StatusCode=status,
                                  SourceTimestamp=now, ServerTimestamp=now)  # fmt: skip
                pending.append((nid, dv))
                continue
            raw[nid] = (value, vt, status, now)
            if av.value_callback is None:
                reader = readers.get(nid)
                if reader is None:
                    reader = readers[nid] = self._reader(nid)
                av.value_callback = reader
        return pending

    def _reader(self, nid: ua.NodeId) -> Any:
        raw = self._raw

        def read(_nodeid: ua.NodeId, _attr: ua.AttributeIds) -> ua.DataValue:
            value, vt, status, ts = raw[nid]
            return ua.DataValue(Value=ua.Variant(value, vt), StatusCode=status,
                                SourceTimestamp=ts, ServerTimestamp=ts)  # fmt: skip

        return read

    def _link_down(self, loop: Any, name: str) -> bool:
        """Whether every link of ``loop`` carrying output ``name`` is down (comms lost)."""
        links = getattr(loop, "links", None) or ()
        carrying = [lk for lk in links if getattr(lk, "carries", lambda n: False)(name)]
        return bool(carrying) and not any(getattr(lk, "connected", True) for lk in carrying)

    async def write_batch(self, writes: Sequence[tuple[ua.NodeId, ua.DataValue]]) -> None:
        """Write many values straight into the address space in one pass.

        Each Value attribute is resolved once (after the address space is built) and assigned
        directly; the data-change callbacks that feed client subscriptions are still called.
        This skips asyncua's per-write node lookup and type check: the types are ours and fixed.
        A node that is not in the cache goes through ``AddressSpace.write_attribute_value``.
        """
        assert self._server is not None
        cache = self._attvals
        aspace = self._server.iserver.aspace
        attr = ua.AttributeIds.Value
        for nid, value in writes:
            av = cache.get(nid)
            if av is None or av.value_setter is not None:
                await aspace.write_attribute_value(nid, attr, value)
                continue
            av.value = value
            av.value_callback = None
            if av.datachange_callbacks:
                for key, callback in list(av.datachange_callbacks.items()):
                    try:
                        await callback(key, value)
                    except Exception:  # one subscriber must not stop the publication
                        _log.exception("twin server: data-change callback failed for %s", nid)

    def _cache_attribute_values(self, server: Server) -> None:
        """Resolve the Value attribute of every published variable (asyncua 2.1 internals)."""
        self._attvals = {}
        nodes = getattr(server.iserver.aspace, "_nodes", None)
        if not isinstance(nodes, dict):
            _log.info("twin server: asyncua address space layout unknown, using the slow path")
            return
        for nid in self._vars.values():
            node = nodes.get(nid)
            av = node.attributes.get(ua.AttributeIds.Value) if node is not None else None
            if av is not None and hasattr(av, "datachange_callbacks"):
                self._attvals[nid] = av


def _num(dv: Any) -> float | None:
    v = getattr(getattr(dv, "Value", None), "Value", None)
    if isinstance(v, bool):
        return float(v)
    return float(v) if isinstance(v, (int, float)) else None


def _labels(df: Any, table: str, net: Any) -> list[str]:
    """Element labels as the point map makes them (``twin.labels``)."""
    from twin.labels import table_labels

    labels = table_labels(net, table)
    return [labels[int(i)] for i in df.index]
