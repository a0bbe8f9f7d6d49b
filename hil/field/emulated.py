"""The field with hardware in the loop: the emulated substation (or real devices) + SyncLoop.

The emulated substation starts on the simulated clock and ``hil.sync.SyncLoop`` drives it: in
``hil`` mode the twin is the plant and the devices answer; in ``mirror`` mode a second model plays
the plant (writing true measurements that the emulated RTU turns into reported ones, with bias
and noise) and the twin follows it, flagging divergence. Links to the emulated substation:

- ``direct``: :class:`hil.links.store.StoreLink`, in-process. Alone, it carries every point
  (no sockets at all). Beside a protocol link it is the plant's analog side only: the twin's
  computed measurements (and the PV available power, a fault current) go into the substation
  in-process, as a plant's transducers would feed its RTU, and everything else (statuses the
  twin applies, commands, set points) goes over the protocol link;
- ``opcua``: an OPC UA client over loopback, logged in as the plant (it can write measurements),
  polled once per step;
- ``modbus``: a Modbus TCP client over loopback; Modbus cannot write input registers, so it
  carries statuses, commands and setpoints and needs ``opcua`` or ``direct`` beside it for the
  twin's measurements.

Only the protocol servers a link talks to are started. Device time is the substation's
(``EmulatedSubstation.advance``): actions taken between steps run at their own time, so device
timers (a breaker's operate time, a relay's delay) resolve exactly, not at the next step.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hil.field.base import SimClock, StepOutcome, alarm_dict
from hil.links.store import StoreLink
from twin.quality import Quality

#: the sync loop's alarm kinds that name a point and reach the scenario engine
_POINT_ALARMS = frozenset({"divergence", "implausible"})
_log = logging.getLogger(__name__)


#: Status columns whose changes are events (breaker positions, tap positions); analog statuses
#: such as an inverter's P and Q change every step and are in the time series instead.
_DISCRETE = frozenset({"closed", "tap_pos", "in_service"})
#: The source of the RTU scan's re-stamps (not the source of a change: see _note_source)
_SCAN_SOURCE = "device:rtu-scan"


class _EventsOnly:
    """Hands SyncLoop's events and alarms to the recorder; the engine records the rows itself."""

    def __init__(self, recorder: Any) -> None:
        self._rec = recorder

    def record(self, time_s: float, values: Mapping[str, float]) -> None:
        return None

    def event(self, time_s: float, kind: str, message: str, **fields: Any) -> None:
        self._rec.event(time_s, kind, message, **fields)

    def alarm(self, *args: Any) -> None:
        self._rec.alarm(*args)


class EmulatedField:
    """Emulated substation on the simulated clock, links, and one or two sync loops."""

    has_hardware = True
    emulated = True

    def __init__(
        self,
        *,
        net: Any,
        model: Any,
        mode: str,
        links: Sequence[str],
        recorder: Any,
        clock: SimClock,
        seed: int,
        plant_model_factory: Callable[[Any], Any] | None = None,
        stale_factor: float = 3.0,
        serve: tuple[int, int] | None = None,
        twin_server_port: int | None = None,
        security: Any = None,
    ) -> None:
        from hil.security.run import RunPki
        from twin.pointmap import generate_pointmap

        self.net = net
        self.model = model
        self.mode = mode
        self.link_kinds = list(links)
        self.recorder = recorder
        self.clock = clock
        self.seed = seed
        self.stale_factor = stale_factor
        self.pointmap = generate_pointmap(net, mode=mode)
        # The plant's view of the same points (mirror mode): measurements go to the field.
        self.plant_pointmap = self.pointmap if mode == "hil" else generate_pointmap(net, mode="hil")
        self.plant_model = None
        if mode == "mirror" and plant_model_factory is not None:
            # the emulated substation needs a plant; against hardware the hardware is the plant
            self.plant_model = plant_model_factory(copy.deepcopy(net))
        self.sub: Any = None
        self.links: list[Any] = []
        self.plant_link: StoreLink | None = None
        self.sync: Any = None
        self.plant_sync: Any = None
        self.devices: dict[str, Any] = {}
        self.rtu: Any = None
        self._deferred: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self.pending_outputs: dict[str, float] = {}
        self.faults: dict[str, dict[str, Any]] = {}
        self._scanned = [p for p in self.pointmap.points if p.direction == "to_twin"]
        self._cut: set[str] = set()
        self._scan_key: frozenset[str] | None = None  # the cut _scan_list was made for
        self._scan_list: list[str] = []
        self._scan_needed = True  # set at start: whether the scan's re-stamps reach anyone
        self._password = secrets.token_urlsafe(12)
        #: link name -> connected at the last step (link lost/restored events)
        self._link_up: dict[str, bool] = {}
        #: status point -> last GOOD value seen (status changes the field made by itself)
        self._status_seen: dict[str, float] = {}
        #: element label -> simulated time of the twin's last command to it
        self._commanded: dict[str, float] = {}
        #: per store position: the code (index in _sources) of its last write's source in
        #: the emulated store (who changed it; -1: nobody yet)
        self._last_src: np.ndarray | None = None
        self._sources: list[str] = []
        self._source_code: dict[str, int] = {}
        #: (names, store positions) of the setpoints (setpoint_values), made once
        self._setpoints: tuple[list[str], np.ndarray] | None = None
        #: (name, label) of the discrete statuses the field reports (_note_field), made once
        self._discrete: list[tuple[str, str]] | None = None
        #: element label -> (who, when) of the last command written to it from outside the
        #: devices (a breaker's cmd, a tap changer's raise/lower): another master
        self._outside_command: dict[str, tuple[str, float]] = {}
        #: (OPC UA port, Modbus port) to serve the substation on for an outside controller
        self.serve = serve
        #: the operator login an outside OPC UA client may use while serving
        self.serve_password = secrets.token_urlsafe(9)
        self.twin_server_port = twin_server_port
        self.twin_server: Any = None
        self._sub_started = False
        #: :class:`hil.security.run.RunSecurity` of the run (None: its defaults, secure)
        self.security = security
        self._one_time = RunPki()  # one-time certificates of the run (removed at stop)
        self._embedded: Any = None  # EmbeddedSecurity of the twin's OPC UA link, if signed
        self._server_setup: Any = None  # ServerSetup of the servers outside clients reach
        #: the audit log of every protocol write of the run (the substation's; the twin
        #: server's refused writes go there too)
        self._audit: Any = None

    @property
    def description(self) -> str:
        # (the links really used are listed beside it: Field.links_used)
        return "emulated substation"

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        from hil.emulator import EmulatedSubstation
        from hil.emulator.devices import RTUMeasurements

        users: dict[str, Any] = {
            "plant": (self._password, "plant"),
            "operator": (self._password, "operator"),
        }
        opcua_security = self._substation_security(users)
        # Only the servers a link talks to: the OPC UA server mirrors every store write into
        # its address space (~10 ms a step here), so it runs only when an OPC UA link needs it.
        protocols = [k for k in self.link_kinds if k != "direct"]
        # No initial load flow: the twin (or the plant) writes every measurement at t=0.
        ports = self.serve or (0, 0)
        self.sub = EmulatedSubstation(
            self.net,
            self.pointmap,
            clock=self.clock,
            users=users,
            initial_loadflow=False,
            protocols=("opcua", "modbus") if self.serve else (protocols or ("modbus",)),
            opcua_port=ports[0],
            modbus_port=ports[1],
            opcua_security=opcua_security,
        )
        from hil.security.audit import audit_log

        # every write attempt over a protocol, with its peer; the run streams it to audit.jsonl
        self._audit = audit_log(self.sub.store)
        self._cmd_mask: np.ndarray | None = None  # store positions of command points
        self.sub.store.subscribe_batch(self._note_source_batch)
        if protocols or self.serve is not None:
            await self.sub.start()
            self._sub_started = True
        for dev in self.sub.devices:
            self.devices[dev.name] = dev
            if isinstance(dev, RTUMeasurements):
                self.rtu = dev
                dev.rng = np.random.default_rng(self.seed)  # same seed, same noise
        twin_role = "plant" if self.mode == "hil" else "operator"
        self.links = self._make_links(twin_role)
        for link in self.links:
            await link.connect()
        self.sync = self._make_sync(link_now=self.clock)
        if self.mode == "mirror":
            self.plant_link = StoreLink(
                self.sub.store,
                self.plant_pointmap.points,
                role="plant",
                clock=self.clock,
                name="plant",
                stale_factor=self.stale_factor,
            )
            await self.plant_link.connect()
            self.plant_sync = self._make_sync(plant=True, link_now=self.clock)
        self._scan_needed = self._timestamps_read()
        await self._start_twin_server()

    def _timestamps_read(self) -> bool:
        """Whether anyone reads the source timestamps of the statuses the substation reports:
        a link other than Modbus reading inputs (OPC UA, the store link, the mirror plant's),
        the OPC UA server (its clients), or an outside controller (``serve``). Modbus carries
        no timestamps (a value is stamped when its response arrives): with Modbus links only,
        the RTU scan's re-stamps would reach nobody and are skipped."""
        if self.serve is not None or "opcua" in self.sub.protocols:
            return True
        links = [lk for lk in [*self.links, self.plant_link] if lk is not None]
        return any(lk.protocol != "modbus" and lk.inputs for lk in links)

    @property
    def audit(self) -> Any:
        """The run's audit log of protocol writes (:class:`hil.security.audit.AuditLog`)."""
        return self._audit

    def _substation_security(self, users: dict[str, Any]) -> Any:
        """The emulator's OPC UA security; adds the outside controller's users to ``users``.

        Without ``--serve`` only the twin's own link reaches the emulator (loopback, one-time
        passwords): the None policy unless ``security.embedded`` asks for Sign or
        SignAndEncrypt. With ``--serve`` outside clients reach it: it is as secure as the
        twin's server (:func:`hil.security.run.twin_server_setup`), and the twin's own link
        then signs and encrypts too (one-time certificate, trusted by this run only).
        """
        import dataclasses

        from hil.security.run import RunSecurity, embedded_security

        sec = self.security or RunSecurity()
        if self.serve is None:
            self._embedded = embedded_security(sec, self._one_time)
            return self._embedded.server_security() if self._embedded is not None else None
        setup = self._setup_servers()
        if sec.users is not None:  # the users file's logins, with their roles
            for name, entry in setup.users.items():
                users.setdefault(name, entry)
        else:
            users["controller"] = (self.serve_password, "operator")
        if not setup.security.policies:  # --insecure without a PKI: None only, as asked
            return setup.security
        mode = sec.embedded if sec.embedded != "None" else "SignAndEncrypt"
        emb = embedded_security(dataclasses.replace(sec, embedded=mode), self._one_time)
        assert emb is not None and setup.security.certificate is not None
        emb.client.trust(setup.security.certificate)
        self._embedded = emb
        return dataclasses.replace(setup.security, also_trust=(emb.server.trusted,))

    def _setup_servers(self) -> Any:
        if self._server_setup is None:
            from hil.security.run import twin_server_setup

            self._server_setup = twin_server_setup(self.security, self._one_time)
            for note in self._server_setup.notes:
                _log.warning("%s", note)
        return self._server_setup

    async def _start_twin_server(self) -> None:
        """The twin's read-only OPC UA server for the run (``twin_server_port``, 0: free),
        secure by default (:func:`hil.security.run.twin_server_setup`)."""
        if self.twin_server_port is None or self.sync is None:
            return
        from hil.twin_server import TwinServer

        setup = self._setup_servers()
        self.twin_server = TwinServer(
            self.model.net,
            self.pointmap,
            port=self.twin_server_port,
            security=setup.security,
            users=setup.users,
            audit=self.audit,
        )
        await self.twin_server.start()
        self.sync.listeners.append(self.twin_server.publish)

    def endpoints(self) -> dict[str, str]:
        """Where this field serves: the substation for an outside controller, the twin server."""
        out: dict[str, str] = {}
        if self.serve is not None and self.sub is not None:
            out["opcua"] = self.sub.opcua_endpoint
            out["modbus"] = f"127.0.0.1:{self.sub.modbus_port}"
            if self.security is None or self.security.users is None:
                out["opcua_user"] = f"controller / {self.serve_password} (role operator)"
        setup = self._server_setup
        if setup is not None:
            out["opcua_security"] = ", ".join(p.name for p in setup.security.all_policies())
            if setup.security.certificate is not None:
                out["server_certificate"] = str(setup.security.certificate)
                out["trusted_clients"] = str(setup.security.trust)
        if self.twin_server is not None:
            out["twin_server"] = self.twin_server.endpoint
            if setup is not None and setup.one_time_login is not None:
                name, pw = setup.one_time_login
                out["twin_server_user"] = f"{name} / {pw} (read only)"
        return out

    def _make_links(self, role: str) -> list[Any]:
        """The scenario's links as a hardware description bound to the running substation,
        built by the one builder (:func:`hil.hardware.make_links`), in the scenario's order."""
        from hil.hardware import emulated_hardware, make_links

        hw = emulated_hardware(
            self.link_kinds,
            role=role,
            password=self._password,
            stale_factor=self.stale_factor,
            embedded=self._embedded,
        )
        if self._sub_started:  # a protocol link: the servers run, their ports are known
            endpoint = self.sub.opcua_endpoint if "opcua" in self.sub.protocols else ""
            port = self.sub.modbus_port if "modbus" in self.sub.protocols else 0
            hw = hw.bind_emulator(endpoint, port)
        links = make_links(hw, self.pointmap, clock=self.clock, store=self.sub.store)
        return sorted(links, key=lambda lk: self.link_kinds.index(lk.protocol))

    def _make_sync(self, *, plant: bool = False, **kwargs: Any) -> Any:
        """The twin's sync loop over :attr:`links`, or (``plant``) the emulated plant's over
        :attr:`plant_link`; ``kwargs``: SyncLoop's timing and policy options."""
        from hil.sync import SyncLoop

        if plant:
            model, pm, links, mode, rec = (
                self.plant_model, self.plant_pointmap, [self.plant_link], "hil", None
            )  # fmt: skip
        else:
            model, pm, links, mode = self.model, self.pointmap, self.links, self.mode
            rec = _EventsOnly(self.recorder) if self.recorder is not None else None
        return SyncLoop(
            model,
            _without_device_outputs(pm),
            links,
            mode="mirror" if mode == "mirror" else "hil",
            recorder=rec,
            record_values=False,
            period_s=1.0,
            **kwargs,
        )

    async def stop(self) -> None:
        for link in [*self.links, self.plant_link]:
            if link is None:
                continue
            try:
                await link.close()
            except Exception:  # closing must go on for the others
                _log.exception("closing link %s failed", link)
        if self.twin_server is not None:
            try:
                await self.twin_server.stop()
            except Exception:  # stopping must go on
                _log.exception("stopping the twin's OPC UA server failed")
        if self.sub is not None and self._sub_started:
            await self.sub.stop()
        self._one_time.close()

    # --- the step -----------------------------------------------------------------------------
    def defer(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn()`` in the next step, at the time it was asked for (``clock.t`` now): the
        devices are brought to that time first (actions taken by SimPy events)."""
        self._deferred.append((self.clock.t, fn))

    def _defer_at_device(self, fn: Callable[[float], None]) -> None:
        """Defer a direct action on a device, called with its time (see :meth:`defer`)."""

        async def run() -> None:
            fn(self.clock.t)

        self.defer(run)

    def advance_devices(self, t: float) -> None:
        """Bring the emulated devices to ``t`` (every timer due by then resolves at its time)."""
        self.sub.advance(t)

    async def step(self, t: float) -> StepOutcome:
        todo, self._deferred = self._deferred, []
        for at, fn in todo:
            self.clock.t = min(at, t)
            self.advance_devices(self.clock.t)
            await fn()
        self.clock.t = t
        self.advance_devices(t)
        if self._sub_started and self._scan_needed:
            self._scan(t)
        self._note_faults(t)
        if self.pending_outputs:
            outs, self.pending_outputs = self.pending_outputs, {}
            await self._write_outputs(outs, plant=self.mode == "mirror")
        if self.plant_sync is not None:
            await self.plant_sync.step(t)
        rep = await self.sync.step(t)
        for name, f in self.faults.items():
            if not f.get("cleared"):
                # The relay keeps seeing the fault current, not the twin's computed current that
                # the sync loop has just written: sent again, past the links' deadband.
                await self._write_outputs({f"{name}.i_ka": f["current_ka"]}, plant=True, force=True)
        self._note_field(t)
        # alarms on a point (a divergence, an implausible input) go to the run's checks and summary;
        # a non-converged step is counted by the engine on its own
        alarms = tuple(alarm_dict(a) for a in rep.alarms if a.kind in _POINT_ALARMS)
        return StepOutcome(
            rep.converged,
            self.sync.last_solution if rep.converged else None,
            stale=rep.stale,
            alarms=alarms,
            error=rep.error,
            durations=dict(rep.durations),
        )

    async def _write_outputs(
        self, values: dict[str, float], *, plant: bool, force: bool = False
    ) -> None:
        """Write ``values`` over the links that can; ``force`` sends each one even when it is
        within the link's deadband of the last value written."""
        if plant and self.plant_link is not None:
            await _send(self.plant_link, values, force)
            return
        for link in self.links:
            ok = {n: v for n, v in values.items() if link.can_write(n)}
            if ok and link.connected:
                await _send(link, ok, force)
                for n in ok:
                    values.pop(n, None)
        if values:
            # Points no link of the twin can write (e.g. p_avail on a Modbus-only setup): set them
            # inside the emulated substation, as its plant side would.
            store = self.sub.store
            store.set_many([(n, v) for n, v in values.items() if n in store], source="plant")

    # --- what the field did by itself -----------------------------------------------------------
    def _note_source_batch(self, pos: np.ndarray, source: str) -> None:
        """``_note_source`` for a whole store write (one call per write, positions in the store)."""
        if source == _SCAN_SOURCE:
            return  # a re-stamp of what a device reported: the device stays the source
        store = self.sub.store
        names = store.names
        last = self._last_src
        if last is None or len(last) != len(names):
            last = self._last_src = np.full(len(names), -1, dtype=np.int32)
        code = self._source_code.get(source)
        if code is None:
            code = self._source_code[source] = len(self._sources)
            self._sources.append(source)
        last[pos] = code
        if not source.startswith("device:") and source != "scenario":
            cmd = self._cmd_mask
            if cmd is None or len(cmd) != len(names):
                cmd = self._cmd_mask = np.array(
                    [store.point_at(i).kind == "command" for i in range(len(names))], dtype=bool
                )
            for i in pos[cmd[pos]].tolist():
                self._outside_command[names[i].rsplit(".", 1)[0]] = (source, self.clock.t)

    def _note_source(self, point: Any, sample: Any, source: str) -> None:
        """``_note_source_batch`` for one point (a per-point listener's signature)."""
        name = point if isinstance(point, str) else point.name
        store = self.sub.store
        self._note_source_batch(np.array([store.position(name)], dtype=np.intp), source)

    def _event(self, t: float, kind: str, message: str, **fields: Any) -> None:
        if self.recorder is not None:
            self.recorder.event(t, kind, message, **fields)

    def _note_field(self, t: float) -> None:
        """Link lost/restored and status changes nobody in the scenario asked for, as events
        (noticed at the step ``t``; the source is the device or master that wrote the point)."""
        for link in self.links:
            was = self._link_up.get(link.name)
            now = bool(link.connected)
            if was is not None and was != now:
                if now:
                    self._event(t, "link_restored", f"link {link.name} restored", link=link.name)
                else:
                    why = link.stats.get("last_error") or "connection lost"
                    self._event(t, "link_lost", f"link {link.name} lost: {why}", link=link.name)
            self._link_up[link.name] = now
        samples = self.sync.samples if self.sync is not None else {}
        discrete = self._discrete
        if discrete is None:
            # an inverter's P/Q output is a status too, but it moves every step: not here
            discrete = self._discrete = [
                (
                    p.name,
                    p.name[: -len(p.column) - 1] if p.name.endswith("." + p.column) else p.name,
                )
                for p in self.pointmap.points
                if p.kind == "status" and p.direction == "to_twin" and p.column in _DISCRETE
            ]
        good = Quality.GOOD
        seen = self._status_seen
        for name, label in discrete:
            smp = samples.get(name)
            if smp is None or smp.quality is not good:
                continue
            before = seen.get(name)
            seen[name] = smp.value
            if before is None or before == smp.value:
                continue
            asked = self._commanded.get(label)
            if asked is not None and t - asked <= 60.0:
                continue  # the twin's own command, logged by the scenario
            source = self._status_source(name, label)
            self._event(
                t,
                "field_change",
                f"{name} {before:g} -> {smp.value:g} by the field ({source})",
                point=name,
                source=source,
                before=before,
                after=smp.value,
            )

    def _status_source(self, point: str, label: str) -> str:
        """Who changed a status: another master's recent command to the element (its cmd,
        tap_raise or tap_lower), else the last writer of the point (a device)."""
        cmd = self._outside_command.get(label)
        if cmd is not None and self.clock.t - cmd[1] <= 60.0:
            return f"command from {cmd[0]}"
        last = self._last_src
        store = self.sub.store if self.sub is not None else None
        if last is None or store is None or point not in store:
            return "field"
        code = int(last[store.position(point)])
        return self._sources[code] if code >= 0 else "field"

    def link_quality(self) -> dict[str, float]:
        """Per link: ``link.up[<name>]`` (1/0) and ``link.good[<name>]``, the share of its
        inputs that are GOOD now (record columns)."""
        out: dict[str, float] = {}
        for link in self.links:
            key = self._link_key(link)
            out[f"link.up[{key}]"] = 1.0 if link.connected else 0.0
            out[f"link.good[{key}]"] = link.good_share()
        return out

    def _link_key(self, link: Any) -> str:
        # the emulated substation's ports are random: name its links by kind (one per kind),
        # so the same seed gives the same columns
        return str(link.protocol)

    def links_used(self) -> list[str]:
        return [lk.name for lk in self.links]

    def active_alarms(self) -> int:
        return len(self.sync.active_alarms) if self.sync is not None else 0

    def setpoint_values(self) -> dict[str, float]:
        if self.sub is None:
            return {}
        store = self.sub.store
        sp = self._setpoints
        if sp is None:
            pts = self.pointmap.points
            names = list(dict.fromkeys(p.name for p in pts if p.kind == "setpoint"))
            sp = self._setpoints = (names, store.positions(names))
        names, pos = sp
        return dict(zip(names, store.values[pos].tolist()))

    def offer_output(self, name: str, value: float) -> None:
        self.pending_outputs[name] = float(value)

    def stats(self) -> dict[str, Any]:
        out = {"sync": _jsonable(self.sync.stats()) if self.sync else {}}
        out["links"] = {lk.name: _jsonable(dict(lk.stats)) for lk in self.links}
        if self.sub is not None:
            out["devices"] = {"count": len(self.sub.devices), "rounds": self.sub.device_steps}
        return out

    # --- actions for events (synchronous: they queue async work for the next step) ------------
    def _link_for(self, name: str) -> Any:
        return next((link for link in self.links if link.can_write(name)), None)

    def _scan(self, t: float) -> None:
        """The RTU's scan: re-stamp every GOOD status a live device reports, at ``t``.

        Devices write a status only when it changes, so over a protocol an unchanged breaker
        position would carry the source timestamp of its last change and turn STALE. A real RTU
        refreshes what it reports every scan; points of a device cut off by ``comms_loss`` are
        not refreshed.
        """
        store = self.sub.store
        get = store.get
        good = Quality.GOOD
        items = []
        for name in self._scan_names():
            smp = get(name)
            if smp.quality is good:
                items.append((name, smp.value))
        if items:
            # one bulk write, stamped t (GOOD: only GOOD values are re-stamped)
            store.set_many(items, timestamp=t, source=_SCAN_SOURCE)

    def _scan_names(self) -> list[str]:
        """The scanned points not cut off by ``comms_loss``, recomputed when the cut changes."""
        key = frozenset(self._cut)
        if self._scan_key != key:
            self._scan_key = key
            self._scan_list = [p.name for p in self._scanned if p.name not in key]
        return self._scan_list

    def command(self, name: str, value: float) -> None:
        """A command or setpoint write, sent by the twin's link as an operator would."""
        self._commanded[name.rsplit(".", 1)[0]] = self.clock.t
        link = self._link_for(name)

        async def send() -> None:
            if link is not None and link.connected:
                await link.write_point(name, value)
            else:
                self.sub.store.write(name, value, role="operator", source="scenario")

        self.defer(send)

    def read_point(self, name: str) -> float | None:
        s = self.sub.store.get(name)
        return s.value if s.quality.is_good else None

    def write_setpoint(self, name: str, value: float) -> None:
        self.command(name, value)

    def device(self, name: str) -> Any:
        dev = self.devices.get(name)
        if dev is None:
            raise KeyError(name)
        return dev

    def device_points(self, name: str) -> list[str]:
        return [p.name for p in self.pointmap.points if p.name.startswith(name + ".")]

    def comms_loss(self, target: str) -> None:
        link = next((lk for lk in self.links if target in (lk.name, lk.protocol)), None)
        if link is not None:

            async def down() -> None:
                await link.close()

            self.defer(down)
            return
        dev = self.devices.get(target)
        names = self.device_points(target)
        self._cut.update(names)
        for lk in [*self.links, self.plant_link]:
            if lk is not None:
                lk.cut(names)
        # the substation reports the device's points COMMS_LOST (what an outside master sees
        # with --serve), as a gateway reports a device that dropped off
        if names:
            self._defer_at_device(lambda now: self.sub.set_device_offline(target, True))
        if dev is not None:
            self._defer_at_device(dev.comms_lost)

    def comms_restore(self, target: str) -> None:
        link = next((lk for lk in self.links if target in (lk.name, lk.protocol)), None)
        if link is not None:

            async def up() -> None:
                await link.connect()

            self.defer(up)
            return
        names = self.device_points(target)
        self._cut.difference_update(names)
        for lk in [*self.links, self.plant_link]:
            if lk is not None:
                lk.restore(names)
        if names:
            self._defer_at_device(lambda now: self.sub.set_device_offline(target, False))
        dev = self.devices.get(target)
        if dev is not None:
            self._defer_at_device(dev.comms_restored)

    def device_restart(self, name: str) -> None:
        """A restart: the device drops off the link and comes back with its fallback cleared."""
        dev = self.devices.get(name)
        if dev is None:
            raise KeyError(name)

        def restart(now: float) -> None:
            dev.comms_lost(now)
            dev.comms_restored(now)

        self._defer_at_device(restart)

    def meas_error(
        self,
        point: str,
        *,
        sigma: float | None = None,
        offset: float | None = None,
    ) -> None:
        if self.rtu is None:
            raise RuntimeError("the emulated substation has no RTU device")
        if sigma is not None:
            self.rtu.set_noise(sigma, point=point)
        if offset is not None:
            self.rtu.set_bias(point, offset)
        if self.rtu.has_true_value(point):
            self.rtu.refresh(point)

    def freeze_point(self, point: str, frozen: bool) -> None:
        """The substation's report of ``point`` freezes (value and timestamp) or thaws."""
        self.sub.store.point(point)  # an unknown point fails now, in the event
        self._defer_at_device(lambda now: self.sub.freeze_point(point, frozen))

    def der_trip(self, label: str, tripped: bool) -> None:
        """Trip an inverter (held off) or release it; a set point where there is no inverter."""
        from hil.emulator.devices import DERInverter

        dev = self.devices.get(label)
        if isinstance(dev, DERInverter):
            if tripped:
                self._defer_at_device(lambda now: dev.force_trip(now, "der_trip event"))
            else:
                self._defer_at_device(dev.release)
            return
        self.command(f"{label}.p_limit_pct", 0.0 if tripped else 100.0)

    def tap_operate(self, label: str, delta: int) -> bool:
        """A manual raise/lower at the tap changer, queued behind earlier commands (an AVR set
        to manual by a set point just before must see that first). False: no tap changer."""
        dev = self.devices.get(label)
        if dev is None or not hasattr(dev, "operate"):
            return False
        t_cmd = self.clock.t

        async def operate() -> None:
            if int(delta) not in (1, -1) or not dev.operate(t_cmd, int(delta)):
                why = (
                    "one step at a time (delta +1 or -1)"
                    if int(delta) not in (1, -1)
                    else "manual mode, within the tap limits, mechanism at rest"
                )
                if self.recorder is not None:
                    self.recorder.event(
                        t_cmd,
                        "tap_change_refused",
                        f"{label}: tap change {int(delta):+d} refused by the tap changer; "
                        f"expected {why}",
                        element=label,
                    )

        self.defer(operate)
        return True

    def start_fault(self, line_label: str, current_ka: float, t: float) -> None:
        relay = self.devices.get(line_label)
        self.faults[line_label] = {
            "current_ka": float(current_ka),
            "t": t,
            "relay": relay,
            "trips": len(getattr(relay, "trips", [])),
        }

        async def inject() -> None:
            await self._write_outputs({f"{line_label}.i_ka": float(current_ka)}, plant=True)

        self.defer(inject)

    def clear_fault(self, line_label: str) -> None:
        self.faults.pop(line_label, None)

    def _note_faults(self, t: float) -> None:
        for name, f in self.faults.items():
            relay = f["relay"]
            if f.get("cleared") or relay is None:
                continue
            trips = getattr(relay, "trips", [])
            if len(trips) > f["trips"]:
                trip = trips[-1]
                f["cleared"] = True
                f["cleared_at"] = trip.time
                if self.recorder is not None:
                    self.recorder.event(
                        trip.time,
                        "fault_cleared",
                        f"fault on {name} cleared: relay {relay.name} tripped breaker "
                        f"{relay.breaker.name} ({trip.cause})",
                        line=name,
                        breaker=relay.breaker.name,
                    )


async def _send(link: Any, values: dict[str, float], force: bool) -> None:
    """``link.write_outputs(values)``, or one ``write_point`` each (no deadband) with ``force``."""
    if not force:
        await link.write_outputs(values)
        return
    for n, v in values.items():
        await link.write_point(n, v)


def _without_device_outputs(pm: Any) -> Any:
    """The point map minus ``sgen.p_avail_mw``: the engine writes it from the profiles itself
    (it is no load-flow result, so the sync loop has nothing to write there)."""
    import dataclasses

    return dataclasses.replace(
        pm,
        points=tuple(p for p in pm.points if not (p.table == "sgen" and p.column == "p_avail_mw")),
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x
