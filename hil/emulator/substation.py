"""EmulatedSubstation: one PointStore served over OPC UA and Modbus TCP, with device behaviours.

Initial values: statuses and model inputs come from the net (``switch.closed``, ``trafo.tap_pos``,
``sgen.p_mw`` ...); measurements come from one pandapower ``runpp`` on a copy of the net, so a
Modbus master sees plausible values before the twin writes any (``initial_loadflow=False`` leaves
them INVALID instead; if the load flow fails they stay INVALID, with a warning). Points that
exist only in the field device (``switch.cmd``, ``trafo.avr_*``, ...) are left to the devices.

The store outlives the servers: ``stop()`` then ``start()`` serves the same values on the same
ports, which is what link-loss tests need.

Device time is discrete-event: devices are stepped when a timer of theirs falls due
(``Device.next_due``: a breaker operation, a relay or AVR delay, an inverter trip/reconnect, a
watchdog), when something outside the devices writes the store (a client command, the plant's
measurements; devices are stepped at the time of the write), and at the time asked for. So
``advance(t)`` costs a few device steps per call however far ``t`` is, and every timer resolves
at its own time: a 0.5 s relay trips at fault + 0.5 s even when ``advance`` is called once a
minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hil.emulator.modbus_server import ModbusServer
from hil.errors import HilError
from hil.store import PointStore
from twin.errors import PointMapError
from twin.pointmap import Point, PointMap, is_heartbeat, resolve_element
from twin.quality import Quality

if TYPE_CHECKING:
    from hil.emulator.opcua_server import OpcuaServer
else:

    def OpcuaServer(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for the class
        """The OPC UA server, its module (and asyncua, ~0.4 s to import) loaded when one is
        made: a Modbus-only substation never loads the OPC UA stack."""
        from hil.emulator.opcua_server import OpcuaServer as server_class

        return server_class(*args, **kwargs)


_log = logging.getLogger(__name__)

#: Wall clock: the longest the device task sleeps (s); it wakes earlier for a due timer.
TICK_S = 0.05
#: advance() runs at most this many due times in one call (a guard against a device that keeps
#: reporting a due time it does not act on); the rest wait for the next call.
MAX_ADVANCE_STEPS = 100_000
#: The protocol servers a substation can serve.
PROTOCOLS = ("opcua", "modbus")
#: Tries to bind freshly picked ports on the first start.
_PORT_ATTEMPTS = 3
#: Store write sources of client writes over a protocol (the servers' ``source``).
_CLIENT_SOURCES = frozenset({"opcua", "modbus"})
#: Wall clock: how often client-written values are checked for aging into STALE (s).
_AGE_EVERY_S = 0.2


class Clock(Protocol):
    def now(self) -> float: ...


class Device(Protocol):
    """What the substation needs of a device; ``next_due(now) -> float | None`` is optional
    (a device without it is stepped only at writes and at the times ``advance`` is asked for)."""

    def step(self, now: float) -> None: ...


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pick_port(host: str) -> int:
    family, _type, _proto, _name, addr = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(addr)
        return int(s.getsockname()[1])


def initial_values(net: Any, store: PointStore, *, loadflow: bool = True) -> int:
    """Fill the store from the net; returns how many points got a GOOD value."""
    res_ok = False
    res_net = None
    if loadflow and any(p.kind == "measurement" for p in store.pointmap.points):
        try:
            import copy

            import pandapower as pp

            res_net = copy.deepcopy(net)
            pp.runpp(res_net)
            res_ok = True
        except Exception as exc:  # any failure: leave measurements INVALID, say why
            _log.warning("initial load flow failed, measurements stay INVALID: %s", exc)
    count = 0
    for point in store.pointmap.points:
        value = _model_value(net, res_net if res_ok else None, point)
        if value is not None and math.isfinite(value):
            store.set(point.name, value, quality=Quality.GOOD, source="init")
            count += 1
    return count


def _model_value(net: Any, res_net: Any, point: Point) -> float | None:
    """A measurement from the load-flow results, anything else from the model inputs."""
    if point.kind == "measurement":
        key = "res_" + point.table
        table = res_net[key] if res_net is not None and key in res_net else None
    else:
        table = net[point.table] if point.table in net else None
    if table is None or point.column not in table.columns:
        return None  # a device-only column (cmd, avr_*, ...) or no results
    try:
        idx = resolve_element(net, point)
    except PointMapError:  # not in this net: nothing to start from
        return None
    if idx not in table.index:
        return None
    try:
        return float(table.at[idx, point.column])
    except (TypeError, ValueError):
        return None


def _build_devices(
    net: Any, pointmap: PointMap, store: PointStore, rng: Any, settings: Any
) -> list[Device]:
    try:
        from hil.emulator.devices import build_devices
    except ImportError as exc:  # written in parallel; the servers work without it
        _log.warning("device behaviours not available (%s): serving points only", exc)
        return []
    kwargs: dict[str, Any] = {"rng": rng}
    if settings is not None:
        kwargs["settings"] = settings
    return list(build_devices(net, pointmap, store, **kwargs))


class _SequentialRound:
    """Every device stepped one by one, in order (without ``hil.emulator.devices``)."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = tuple(devices)

    def step(self, now: float, on_error: Callable[[int, Any, BaseException], None]) -> None:
        for i, dev in enumerate(self.devices):
            try:
                dev.step(now)
            except Exception as exc:  # one broken device must not stop the others
                on_error(i, dev, exc)


class EmulatedSubstation:
    """A substation emulated on loopback: OPC UA + Modbus TCP servers over one PointStore.

    Args:
        net: the pandapower net the substation belongs to.
        pointmap: the points it serves.
        host: address both servers bind (127.0.0.1 unless told otherwise).
        opcua_port, modbus_port: 0 picks a free port once; restarts reuse it.
        clock: None for the wall clock (devices tick every 50 ms), or an object with ``now()``
            for simulated time (devices move only on ``advance(t)``).
        users: OPC UA users ``name -> (password, role)``; anonymous sessions get
            ``anonymous_role``.
        devices: build device behaviours (``hil.emulator.devices.build_devices``), or False, or
            a ready list of devices.
        modbus_role: the role Modbus writes act with (Modbus has no authentication).
        anonymous_role: role of anonymous OPC UA sessions; None refuses them.
        security_policies: asyncua ``SecurityPolicyType`` list (default NoSecurity only);
            encrypting policies need ``certificate`` and ``private_key`` (file paths).
        initial_loadflow: measurements from one ``runpp`` at start (else INVALID).
        rng, device_settings: passed to ``build_devices`` (RTU noise seed, device settings).
        protocols: the servers ``start()`` starts, some of ``("opcua", "modbus")``; a server
            mirrors every store write (OPC UA) or answers from the store (Modbus), so leaving
            out one nobody talks to saves its cost.
        opcua_security: :class:`hil.security.certs.OpcuaSecurity` of the OPC UA server (its
            policies, certificate and trust list replace ``security_policies``,
            ``certificate`` and ``private_key``; anonymous sessions only if it is insecure).
        modbus_policy: :class:`hil.emulator.modbus_server.ModbusPolicy` of the Modbus server
            (read-only, write allow-list, connection limits, TLS).
    """

    def __init__(
        self,
        net: Any,
        pointmap: PointMap,
        *,
        host: str = "127.0.0.1",
        opcua_port: int = 0,
        modbus_port: int = 0,
        clock: Clock | None = None,
        users: Mapping[str, tuple[str, str]] | None = None,
        devices: bool | list[Device] = True,
        modbus_role: str = "operator",
        anonymous_role: str | None = "viewer",
        security_policies: list[Any] | None = None,
        initial_loadflow: bool = True,
        rng: Any = None,
        device_settings: Any = None,
        certificate: str | None = None,
        private_key: str | None = None,
        protocols: tuple[str, ...] | list[str] = PROTOCOLS,
        heartbeat_watchdog: bool | None = None,
        stale_aging: bool | None = None,
        opcua_security: Any = None,
        modbus_policy: Any = None,
    ) -> None:
        bad = [p for p in protocols if p not in PROTOCOLS]
        if bad or not protocols:
            raise HilError(
                f"emulated substation: expected protocols from {', '.join(PROTOCOLS)}, "
                f"found {list(protocols)!r}"
            )
        self.protocols = tuple(dict.fromkeys(protocols))
        self.net = net
        self.pointmap = pointmap
        self.host = host
        self.clock = clock
        now_fn: Callable[[], float] = clock.now if clock is not None else time.time
        self._now_fn = now_fn
        self.store = PointStore(pointmap, clock=now_fn)
        initial_values(net, self.store, loadflow=initial_loadflow)
        if devices is True:
            self.devices: list[Device] = _build_devices(
                net, pointmap, self.store, rng, device_settings
            )
        elif devices is False:
            self.devices = []
        else:
            self.devices = list(devices)
        self._requested = (opcua_port, modbus_port)
        self._users = dict(users or {})
        self._anonymous_role = anonymous_role
        self._security_policies = security_policies
        self._certificate = certificate
        self._private_key = private_key
        self._modbus_role = modbus_role
        self._opcua_security = opcua_security
        self._modbus_policy = modbus_policy
        self.opcua: OpcuaServer | None = None
        self.modbus: ModbusServer | None = None
        self._modbus_started = False
        self._tick: asyncio.Task[None] | None = None
        self._device_t = now_fn()  # the time devices were last stepped at
        self._written_at: float | None = None  # first outside write since then
        self._failed_devices: set[int] = set()
        self._round: Any = None  # the stepping plan of self.devices (_device_round)
        #: the round's event_lists and the bare lists in it (one any() per round)
        self._event_lists: tuple[Any, list[Any]] | None = None
        self.device_steps = 0  # device rounds run (every device stepped once per round)
        self.heartbeat_points = frozenset(p.name for p in pointmap.points if is_heartbeat(p))
        self._hb_mask: np.ndarray | None = None  # store positions of heartbeat points
        if self.devices:
            self.store.subscribe_batch(self._on_store_write_batch)
        # Watchdogs both ways (issue 11), on the wall clock only by default: on a simulated
        # clock the twin and the substation share one process and one time, nobody can vanish.
        wall = clock is None
        self.heartbeat_watchdog = wall if heartbeat_watchdog is None else bool(heartbeat_watchdog)
        self.stale_aging = wall if stale_aging is None else bool(stale_aging)
        #: measurements/statuses a client (the twin as the plant) wrote: name -> when
        self._fresh: dict[str, float] = {}
        self._aged_at = -math.inf
        #: (time, device, kind, message) of the watchdogs: safe states, masters back, values
        #: aged into STALE (one line per aging round)
        self.watchdog_log: list[tuple[float, str, str, str]] = []
        if self.heartbeat_watchdog or self.stale_aging:
            self.store.subscribe(self._watch_client_write)
        if not is_loopback(host):
            _log.warning("emulated substation binds %s, which is not a loopback address", host)

    # properties ------------------------------------------------------------------------------
    @property
    def opcua_endpoint(self) -> str:
        if self.opcua is None:
            why = "not started" if "opcua" in self.protocols else "OPC UA not served"
            raise HilError(f"emulated substation: {why}, no OPC UA endpoint")
        return self.opcua.endpoint

    @property
    def opcua_port(self) -> int:
        if self.opcua is None:
            why = "not started" if "opcua" in self.protocols else "OPC UA not served"
            raise HilError(f"emulated substation: {why}, no OPC UA port")
        return self.opcua.port

    @property
    def modbus_port(self) -> int:
        if self.modbus is None:
            why = "not started" if "modbus" in self.protocols else "Modbus not served"
            raise HilError(f"emulated substation: {why}, no Modbus port")
        return self.modbus.port

    @property
    def running(self) -> bool:
        if "opcua" in self.protocols:
            return self.opcua is not None and self.opcua.running
        return self._modbus_started

    def node_id(self, name: str) -> str:
        """The OPC UA node id string of a point, as served (after start)."""
        if self.opcua is None:
            raise HilError("emulated substation: not started")
        return self.opcua.node_id(name).to_string()

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start both servers (and the device tick on the wall clock). Idempotent."""
        if self.running:
            return
        first = not self._servers_created()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            if not self._servers_created():
                self._create_servers()
            try:
                if self.modbus is not None:
                    await self.modbus.start()
                    self._modbus_started = True
                if self.opcua is not None:
                    await self.opcua.start()
                break
            except OSError as exc:
                await self._stop_servers()
                # a port picked here can be taken by someone else before we bind it: pick
                # again, but only on the first start (a restart must keep its ports)
                if not first or 0 not in self._requested or attempt == _PORT_ATTEMPTS:
                    raise
                _log.info("port taken (%s), picking new ports (attempt %d)", exc, attempt)
                self.opcua = self.modbus = None
            except BaseException:
                await self._stop_servers()
                raise
        if self.clock is None and (self.devices or self.stale_aging):
            self._tick = asyncio.create_task(self._tick_loop(), name="gridtwin-device-tick")
        _log.info(
            "emulated substation %s: OPC UA %s, Modbus %s, %d points, %d devices",
            self.pointmap.substation,
            self.opcua.endpoint if self.opcua is not None else "not served",
            f"{self.host}:{self.modbus.port}" if self.modbus is not None else "not served",
            len(self.pointmap),
            len(self.devices),
        )

    def _servers_created(self) -> bool:
        return ("opcua" not in self.protocols or self.opcua is not None) and (
            "modbus" not in self.protocols or self.modbus is not None
        )

    def _create_servers(self) -> None:
        opcua_port, modbus_port = self._requested
        # pick free ports once: asyncua advertises its endpoint URL before binding, so port 0
        # cannot be passed through; restarts reuse the ports picked here
        if "modbus" in self.protocols:
            if modbus_port == 0:
                modbus_port = _pick_port(self.host)
            self.modbus = ModbusServer(
                self.store,
                host=self.host,
                port=modbus_port,
                role=self._modbus_role,
                policy=self._modbus_policy,
            )
        if "opcua" not in self.protocols:
            return
        if opcua_port == 0:
            opcua_port = _pick_port(self.host)
        self.opcua = OpcuaServer(
            self.store,
            host=self.host,
            port=opcua_port,
            users=self._users,
            anonymous_role=self._anonymous_role,
            security_policies=self._security_policies,
            certificate=self._certificate,
            private_key=self._private_key,
            security=self._opcua_security,
        )

    async def stop(self) -> None:
        """Stop the device tick and both servers; the store keeps its values."""
        tick, self._tick = self._tick, None
        if tick is not None:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
        await self._stop_servers()

    async def _stop_servers(self) -> None:
        if self.opcua is not None:
            await self.opcua.stop()
        if self.modbus is not None:
            await self.modbus.stop()
        self._modbus_started = False

    async def __aenter__(self) -> EmulatedSubstation:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # plant-side faults ---------------------------------------------------------------------------
    def device_points(self, device: str) -> list[str]:
        """The points of ``device`` (an element label: ``Q1`` -> ``Q1.closed``, ``Q1.cmd``)."""
        names = [p.name for p in self.pointmap.points if p.name.startswith(device + ".")]
        if not names:
            raise HilError(
                f"emulated substation: expected a device with points (e.g. "
                f"{self.pointmap.points[0].name.split('.')[0]!r}), found none named {device!r}"
            )
        return names

    def freeze_point(self, name: str, frozen: bool = True) -> None:
        """A frozen report: ``name`` keeps its value and source timestamp from now on (a stuck
        transducer or RTU channel); its quality stays what the device reports. The device
        itself still measures (``PointStore.device_get``)."""
        self.store.freeze(name, frozen, source="fault:frozen")

    def set_device_offline(self, device: str, offline: bool = True) -> None:
        """One device dropped off the substation network: every point of it is reported
        COMMS_LOST (the protocol servers answer those with their "device not responding"
        codes); ``offline=False``: its latest values are reported again."""
        self.store.set_offline(self.device_points(device), offline, source="fault:offline")

    # device behaviours --------------------------------------------------------------------------
    def _on_store_write_batch(self, pos: Any, source: str) -> None:
        """``_on_store_write`` for a whole store write (one call per write)."""
        if self._written_at is not None or source.startswith("device:"):
            return
        hb = self._hb_mask
        if hb is None:
            hb = self._hb_mask = np.array(
                [n in self.heartbeat_points for n in self.store.names], dtype=bool
            )
        if len(pos) and hb[pos].all():
            return
        self._written_at = max(self._now_fn(), self._device_t)

    def _on_store_write(self, point: Any, sample: Any, source: str) -> None:
        """A write from outside the devices (client, plant, twin): devices see it at its time.

        A heartbeat is not an input of any behaviour (its watchdog is fed by
        ``_watch_client_write``): it costs no device round."""
        if point.name in self.heartbeat_points:
            return
        if self._written_at is None and not source.startswith("device:"):
            self._written_at = max(self._now_fn(), self._device_t)

    def _watch_client_write(self, point: Any, sample: Any, source: str) -> None:
        """A client write: feed the heartbeat watchdogs, note when a plant value was fresh."""
        if source not in _CLIENT_SOURCES:
            return
        now = max(self._now_fn(), self._device_t)
        if point.name in self.heartbeat_points:
            if self.heartbeat_watchdog:
                for dev in self.devices:
                    beat = getattr(dev, "heartbeat", None)
                    if beat is not None:
                        beat(now)
        elif self.stale_aging and point.kind in ("measurement", "status"):
            if sample.quality is Quality.GOOD:
                self._fresh[point.name] = now
            else:
                self._fresh.pop(point.name, None)

    def age_values(self, now: float) -> list[str]:
        """Values a client wrote and did not refresh within ``stale_factor * interval_s``
        become STALE (value and source timestamp kept): a twin that stopped writing is not
        served as Good. Returns the names aged now."""
        aged: list[str] = []
        factor = self.pointmap.stale_factor
        store = self.store
        for name, at in list(self._fresh.items()):
            p = store.point(name)
            if now - at <= factor * p.interval_s:
                continue
            del self._fresh[name]
            s = store.get(name)
            if s.quality is Quality.GOOD:
                store.set(
                    name,
                    s.value,
                    quality=Quality.STALE,
                    timestamp=s.timestamp,
                    source="device:stale-watch",
                )
                aged.append(name)
        if aged:
            msg = f"{len(aged)} values not refreshed by their writer are STALE, e.g. {aged[0]}"
            _log.warning("%s at %.3f s", msg, now)
            self.watchdog_log.append((now, "", "stale", msg))
        return aged

    def _collect_watchdog_events(self) -> None:
        for dev in self.devices:
            evs = getattr(dev, "watchdog_events", None)
            if evs:
                name = str(getattr(dev, "name", dev))
                self.watchdog_log.extend((t, name, k, m) for t, k, m in evs)
                evs.clear()

    def _collect_round_events(self, rnd: Any) -> None:
        """:meth:`_collect_watchdog_events` over the event lists the round cached."""
        lists = getattr(rnd, "event_lists", None)
        if lists is None:
            self._collect_watchdog_events()
            return
        bare = self._event_lists
        if bare is None or bare[0] is not lists:
            bare = self._event_lists = (lists, [evs for _, evs in lists])
        if not any(bare[1]):  # the common round: no device logged anything
            return
        for name, evs in lists:
            if evs:
                self.watchdog_log.extend((t, name, k, m) for t, k, m in evs)
                evs.clear()

    def _device_round(self) -> Any:
        """The stepping plan of :attr:`devices` (``DeviceRound``: inverters as one batch),
        rebuilt when the device list changed."""
        rnd = self._round
        if rnd is None or rnd.devices != tuple(self.devices):
            try:
                from hil.emulator.devices import DeviceRound
            except ImportError:  # pragma: no cover - devices are optional (see _build_devices)
                rnd = _SequentialRound(self.devices)
            else:
                rnd = DeviceRound(self.devices)
            self._round = rnd
        return rnd

    def _device_failed(self, index: int, dev: Any, exc: BaseException) -> None:
        if index not in self._failed_devices:
            self._failed_devices.add(index)
            _log.error(
                "device %r failed at t=%s (further failures not logged)",
                dev,
                self._device_t,
                exc_info=exc,
            )

    def _step_devices(self, now: float) -> None:
        w = self._written_at
        if w is not None and w <= now:
            # seen now; writes made while stepping are seen at the next round. A write stamped
            # later than ``now`` (the caller wrote before advancing to its time) stays pending.
            self._written_at = None
        self._device_t = now
        self.device_steps += 1
        # Device writes are stamped with the device time they happen at (a breaker that opened
        # at 90.56 s says so even when advance() is called at 120 s).
        self.store.clock = lambda: now
        rnd = self._device_round()
        try:
            rnd.step(now, self._device_failed)
        finally:
            self.store.clock = self._now_fn
        self._collect_round_events(rnd)

    def next_due(self) -> float | None:
        """The next time devices must be stepped: the first outside store write since the last
        device step, or the earliest device timer after it; None: nothing is pending."""
        return self._pending(self._device_t)

    def _pending(self, after: float | None) -> float | None:
        """Earliest of the pending write time and the device due times later than ``after``
        (None: every due time counts, also one at or before the last step)."""
        due = self._written_at
        now = self._device_t
        dues = getattr(self._device_round(), "next_dues", None)
        if dues is not None:
            for d in dues(now):
                if after is not None and d <= after:
                    continue
                if due is None or d < due:
                    due = d
            return due
        for dev in self.devices:
            fn = getattr(dev, "next_due", None)
            if fn is None:
                continue
            try:
                d = fn(now)
            except Exception:  # a broken device is logged when it is stepped
                continue
            if d is None or (after is not None and d <= after):
                continue
            if due is None or d < due:
                due = d
        return due

    def advance(self, t: float) -> None:
        """Run device behaviours up to time ``t`` (simulated clock, or the wall clock's now).

        For exact timing, bring the devices to the time of a write (``advance(t_write)``)
        before writing: the store holds current values only.

        Devices are stepped at every time something falls due up to ``t``, in time order
        (outside store writes, device timers; a timer started from outside since the last step,
        e.g. ``Breaker.trip``, counts even when already due), then at ``t``. Time never goes
        back: for a ``t`` before the last device step only what is already due runs, at that
        last time.
        """
        t = float(t)
        after: float | None = None  # first round: a timer that is already due counts too
        rounds = 0
        while True:
            due = self._pending(after)
            if due is None or due > t:
                break
            if rounds >= MAX_ADVANCE_STEPS:
                _log.warning("advance(%s): %d due times in one call, rest deferred", t, rounds)
                break
            self._step_devices(max(due, self._device_t))
            after = self._device_t  # every device has been stepped there
            rounds += 1
        if t > self._device_t:
            self._step_devices(t)

    async def _tick_loop(self) -> None:
        while True:
            # devices need a monotonic now; the store stamps with time.time(), so follow it
            # but never step back (NTP adjustments)
            now = max(time.time(), self._device_t)
            self.advance(now)
            if self.stale_aging and now - self._aged_at >= _AGE_EVERY_S:
                self._aged_at = now
                self.age_values(now)
            due = self.next_due()
            wait = TICK_S if due is None else min(TICK_S, max(due - time.time(), 0.0))
            await asyncio.sleep(wait)
